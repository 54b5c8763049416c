"""What a worker loads at start: heavy libraries that most workers never use stay out until needed.

fpdf2 (PDF attachments) and redis-py (Redis stores) were a quarter of a worker's memory at start.
"""

from __future__ import annotations

import subprocess
import sys


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run(  # noqa: S603 - a fixed program
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(out.stdout.split())


def test_the_app_and_its_tools_load_without_fpdf_redis_or_asyncpg() -> None:
    loaded = _loaded_after("import msev15, msev15.web.services, msev15.tools.orders, msev15.mail.render")
    assert "msev15.web.services" in loaded
    assert not {"fpdf", "redis", "asyncpg"} & loaded
