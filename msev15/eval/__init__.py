"""The built-in evaluation: the agent against the shop's rules, τ-bench style (`python -m msev15.eval`)."""
