"""Email delivery: write the rendered mail to the outbox first, deliver it in the background over SMTP.

The outbox row keeps the whole message as sent (parts and attachments), so a mail delivered after
an SMTP outage, or re-sent by another instance, is byte for byte the one that was queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, formataddr
from pathlib import Path
from typing import Any

import aiosmtplib

from msev15.mail.render import Rendered, Shop
from msev15.settings import Settings
from msev15.stores.order_rules import OrderError
from msev15.stores.order_schema import now_iso
from msev15.stores.orders import OrderRepository
from msev15.stores.sql import fetchval, row_dict
from msev15.tracing import SpanKind, span

log = logging.getLogger(__name__)

_PASS = 100  # mails one pass of the sender claims at most, then it looks at the clock again


def recipient_allowed(address: str, patterns: list[str]) -> bool:
    """EMAIL_ALLOWED_RECIPIENTS: exact addresses and `*@domain` (or `@domain`) wildcards."""
    address = address.strip().lower()
    for pattern in patterns:
        pattern = pattern.strip().lower()
        if pattern.startswith("*@") or pattern.startswith("@"):
            if address.endswith("@" + pattern.split("@", 1)[1]):
                return True
        elif address == pattern:
            return True
    return False


@dataclass(frozen=True, slots=True)
class QueuedMail:
    id: str
    message_id: str
    recipient: str
    status: str  # "queued" (the sender will deliver it) or "undelivered" (outbox only)
    attachments: tuple[str, ...] = ()

    def outcome(self) -> dict[str, Any]:
        """What a tool tells the model about this mail."""
        if self.status == "queued":
            note = "queued for delivery; it usually arrives within a minute"
        else:
            note = "saved in the outbox: no mail server is configured, so it was not delivered"
        found: dict[str, Any] = {
            "mail_id": self.id,
            "to": self.recipient,
            "status": self.status,
            "note": note,
        }
        if self.attachments:
            found["attachments"] = list(self.attachments)
        return found


class Mailer:
    """The outbox and its sender task; the database row is the single truth of what was delivered."""

    def __init__(
        self,
        repo: OrderRepository,
        settings: Settings,
        *,
        retry_base: float | None = None,
        retry_max: float | None = None,
        timeout: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repo = repo
        self.settings = settings
        self.retry_base = retry_base if retry_base is not None else settings.smtp_retry_base_seconds
        self.retry_max = retry_max if retry_max is not None else settings.smtp_retry_max_seconds
        self.timeout = timeout if timeout is not None else settings.smtp_timeout_seconds
        # A send in flight holds its row this long, so a second sender (or instance) leaves it alone.
        self.lease = self.timeout * 4
        self.clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # Sent, but the database could not be told (it went away): marked first on the next pass,
        # well within the lease, so nobody sends them again.
        self._unmarked: set[str] = set()
        # The delivery span names the server, never the sender, the recipient or the message.
        self._smtp_span = {"server.address": settings.smtp_server or "", "server.port": settings.smtp_port}

    @property
    def smtp_enabled(self) -> bool:
        return self.settings.smtp_server is not None

    # Lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the sender (only when an SMTP server is configured); it picks up mails left queued."""
        if self.smtp_enabled and self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="mail-sender")

    async def close(self) -> None:
        """Let a send in flight finish (bounded), then stop; queued mails wait for the next start."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=self.timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def check(self) -> str:
        """Readiness: connect and EHLO with a short timeout; no SMTP server is a mode, not a failure."""
        if not self.smtp_enabled:
            return "outbox only"
        client = self._client(timeout=min(self.timeout, 3.0))
        try:
            await client.connect()
            await client.ehlo()
        except (aiosmtplib.SMTPException, OSError) as exc:
            return f"unavailable: {type(exc).__name__}"
        finally:
            with contextlib.suppress(Exception):
                await client.quit()
            client.close()
        return "ok"

    # The outbox ---------------------------------------------------------------------------

    async def enqueue(self, tenant_id: str, to: str, content: Rendered) -> QueuedMail:
        """Write the mail to the outbox (and wake the sender); with no SMTP server, also a .eml file."""
        mail_id = uuid.uuid4().hex
        message = self._build(mail_id, to, content)
        raw = message.as_bytes(policy=SMTP_POLICY)
        status = "queued" if self.smtp_enabled else "undelivered"
        async with self.repo.transaction() as db:
            await db.execute(
                "INSERT INTO outbox (id, tenant_id, message_id, recipient, subject, raw, status,"
                " next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (mail_id, tenant_id, message["Message-ID"], to, content.subject, raw, status,
                 self.clock(), now_iso()),
            )  # fmt: skip
        if self.smtp_enabled:
            self._wake.set()
        else:
            await asyncio.to_thread(_write_eml, self.settings.outbox_dir, mail_id, raw)
            log.info("mail %s kept in the outbox (no SMTP_SERVER)", mail_id)
        return QueuedMail(
            mail_id, str(message["Message-ID"]), to, status, tuple(a.filename for a in content.attachments)
        )

    async def shop(self, tenant_id: str) -> Shop:
        """The tenant's shop as its documents name it."""
        name, return_address = await self.repo.shop(tenant_id)
        return Shop(name, return_address or "Returns Department")

    async def get(self, mail_id: str) -> dict[str, Any] | None:
        """One outbox row (for diagnostics and tests)."""
        async with self.repo.reading() as db:
            row = await db.fetchone(
                "SELECT id, tenant_id, message_id, recipient, subject, status, attempts, last_error,"
                " created_at, delivered_at FROM outbox WHERE id = ?",
                (mail_id,),
            )
        return row_dict(row) if row else None

    async def counts(self) -> dict[str, int]:
        """Mails in the outbox by status, across tenants (the metrics' backlog)."""
        async with self.repo.reading() as db:
            rows = await db.fetchall("SELECT status, count(*) FROM outbox GROUP BY status")
        return {str(row[0]): int(row[1]) for row in rows}

    def _build(self, mail_id: str, to: str, content: Rendered) -> EmailMessage:
        sender = self.settings.sender_email
        domain = sender.rpartition("@")[2] or "localhost"
        message = EmailMessage()
        message["From"] = formataddr((self.settings.sender_name, sender))
        message["To"] = to
        message["Subject"] = " ".join(content.subject.split())  # no header injection via newlines
        message["Date"] = format_datetime(datetime.now(UTC))
        # Stable for the life of the mail: a retried delivery is recognisably the same message.
        message["Message-ID"] = f"<{mail_id}@{domain}>"
        message.set_content(content.text)
        message.add_alternative(content.html, subtype="html")
        for attachment in content.attachments:
            maintype, _, subtype = attachment.content_type.partition("/")
            message.add_attachment(
                attachment.data, maintype=maintype, subtype=subtype, filename=attachment.filename
            )
        return message

    # Delivery -------------------------------------------------------------------------------

    async def deliver_due(self) -> float | None:
        """One pass over the due mails; returns seconds until the next retry is due (None: none)."""
        for mail_id in sorted(self._unmarked):
            await self._delivered(mail_id)
            self._unmarked.discard(mail_id)
        client: aiosmtplib.SMTP | None = None
        try:
            async for mail_id, recipient, raw, attempts in self._claims():
                try:
                    with span("smtp send", self._smtp_span, SpanKind.CLIENT):
                        if client is None or not client.is_connected:
                            client = await self._connect()
                        await client.sendmail(self.settings.sender_email, [recipient], raw)
                except (aiosmtplib.SMTPException, OSError) as exc:
                    await self._failed(mail_id, attempts, exc)
                    if client is not None:
                        client.close()
                        client = None
                    continue
                try:
                    await self._delivered(mail_id)
                except OrderError:
                    self._unmarked.add(mail_id)
                    raise
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.quit()
                client.close()
        return await self._next_due_in()

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                delay = await self.deliver_due()
            except OrderError as exc:  # the database is busy or away: the mails wait in the outbox
                log.warning("mail sender pass skipped: %s", exc)
                delay = self.retry_base
            except Exception:
                log.exception("mail sender pass failed")
                delay = self.retry_base
            if self._stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    def _client(self, timeout: float | None = None) -> aiosmtplib.SMTP:
        s = self.settings
        implicit = s.smtp_port == 465 and s.smtp_use_tls
        return aiosmtplib.SMTP(
            hostname=s.smtp_server,
            port=s.smtp_port,
            use_tls=implicit,
            start_tls=s.smtp_use_tls and not implicit,
            timeout=timeout or self.timeout,
        )

    async def _connect(self) -> aiosmtplib.SMTP:
        client = self._client()
        await client.connect()
        password = self.settings.sender_password
        if password is not None:
            await client.login(self.settings.sender_email, password.get_secret_value())
        return client

    async def _claims(self) -> AsyncIterator[tuple[str, str, bytes, int]]:
        """The due mails, each claimed for one attempt (a lease) just before it is sent.

        A claimed row's next attempt moves a lease ahead: no other sender (or instance) takes it
        meanwhile, and if this instance dies mid-send the row simply falls due again after the lease.
        """
        if self.repo.dialect == "postgresql":
            for _ in range(_PASS):
                if self._stopping:
                    return
                claimed = await self._claim_next()
                if claimed is None:
                    return
                yield claimed
            return
        for mail_id in await self._due_ids():
            if self._stopping:
                return
            found = await self._claim(mail_id)
            if found is not None:
                yield (mail_id, *found)

    async def _claim_next(self) -> tuple[str, str, bytes, int] | None:
        """PostgreSQL: the oldest due row nobody holds, in one statement (SKIP LOCKED never waits)."""
        now = self.clock()
        async with self.repo.transaction() as db:
            row = await db.fetchone(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ? WHERE id = ("
                " SELECT id FROM outbox WHERE status = 'queued' AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED"
                ") RETURNING id, recipient, raw, attempts",
                (now + self.lease, now),
            )
        if row is None:
            return None
        return str(row["id"]), str(row["recipient"]), bytes(row["raw"]), int(row["attempts"])

    async def _due_ids(self) -> list[str]:
        async with self.repo.reading() as db:
            rows = await db.fetchall(
                "SELECT id FROM outbox WHERE status = 'queued' AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at LIMIT 100",
                (self.clock(),),
            )
        return [row[0] for row in rows]

    async def _claim(self, mail_id: str) -> tuple[str, bytes, int] | None:
        """SQLite: take the row for one attempt; a row somebody else holds or delivered is skipped."""
        now = self.clock()
        async with self.repo.transaction() as db:
            changed = await db.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?"
                " WHERE id = ? AND status = 'queued' AND next_attempt_at <= ?",
                (now + self.lease, mail_id, now),
            )
            if changed != 1:
                return None
            row = await db.fetchone("SELECT recipient, raw, attempts FROM outbox WHERE id = ?", (mail_id,))
        assert row is not None
        return row["recipient"], bytes(row["raw"]), int(row["attempts"])

    async def _delivered(self, mail_id: str) -> None:
        async with self.repo.transaction() as db:
            await db.execute(
                "UPDATE outbox SET status = 'delivered', delivered_at = ?, last_error = NULL WHERE id = ?",
                (now_iso(), mail_id),
            )
        log.info("mail %s delivered", mail_id)

    async def _failed(self, mail_id: str, attempts: int, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"[:500]
        if _permanent(exc):
            status, next_at = "failed", self.clock()
            log.error("mail %s refused by the SMTP server, not retried: %s", mail_id, error)
        else:
            delay = min(self.retry_max, self.retry_base * 2 ** (attempts - 1))
            status, next_at = "queued", self.clock() + delay
            log.warning(
                "mail %s not delivered (attempt %d), retry in %.1f s: %s", mail_id, attempts, delay, error
            )
        async with self.repo.transaction() as db:
            await db.execute(
                "UPDATE outbox SET status = ?, next_attempt_at = ?, last_error = ? WHERE id = ?",
                (status, next_at, error, mail_id),
            )

    async def _next_due_in(self) -> float | None:
        async with self.repo.reading() as db:
            due = await fetchval(db, "SELECT min(next_attempt_at) FROM outbox WHERE status = 'queued'")
        if due is None:
            return None
        return max(0.0, float(due) - self.clock())


def _permanent(exc: Exception) -> bool:
    """A 5xx about the recipient or the content will not change on retry; everything else might."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return all(r.code >= 500 for r in exc.recipients)
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused | aiosmtplib.SMTPDataError):
        return exc.code >= 500
    return False


def _write_eml(folder: Path, mail_id: str, raw: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{mail_id}.eml"
    partial = folder / f".{mail_id}.eml.part"
    partial.write_bytes(raw)
    os.replace(partial, target)  # readers never see half a file
