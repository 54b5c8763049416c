"""Another instance's mail sender, as its own process: `python -m tests.outbox_worker URL SMTP_PORT`.

It opens the shared PostgreSQL database and runs the outbox sender against the SMTP port until it
is killed; a test kills it (SIGKILL) while it holds a lease, to show the mail is not lost.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from msev15.mail.sender import Mailer
from msev15.settings import load_settings
from tests.engines import open_postgres


async def run(url: str, smtp_port: int) -> None:
    settings = load_settings(
        _env_file=None,
        order_db_path=Path(tempfile.mkdtemp()) / "unused.db",
        smtp_server="127.0.0.1",
        smtp_port=smtp_port,
        smtp_use_tls=False,
        smtp_timeout_seconds=60.0,
    )
    repo = await open_postgres(url, seed=False, pool_size=2)
    mailer = Mailer(repo, settings)
    await mailer.start()
    print("started", flush=True)  # noqa: T201
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1], int(sys.argv[2])))
