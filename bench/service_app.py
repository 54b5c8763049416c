"""The service, its model client on the transport `BENCH_MODEL_TRANSPORT` names (bench/run.py's A/B).

`hypercorn ... bench.service_app:app`; the service proper (`app:app`) has no such switch.
"""

from __future__ import annotations

import os

from bench import model_transports

model_transports.use(os.environ.get("BENCH_MODEL_TRANSPORT", "lean"))

from app import app  # noqa: E402 - after the swap, which create_model reads when the app starts

__all__ = ["app"]
