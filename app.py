"""Entry point: `hypercorn --config hypercorn.toml app:app` (API only) or `python app.py` (all in one)."""

from __future__ import annotations

from msev15 import create_app

app = create_app()

if __name__ == "__main__":
    from msev15.runner import main

    main(app)
