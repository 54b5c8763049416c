"""`python -m msev15.eval`: evaluate the configured model against the shop's tasks."""

from msev15.eval.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
