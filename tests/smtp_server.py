"""A real aiosmtpd server on 127.0.0.1, in the test's own event loop, that records every mail."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.servers import bound_socket


@dataclass
class ReceivedMail:
    sender: str
    recipients: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class RecordingSMTP:
    """What the server saw. `reject` lists recipients answered with a permanent 550."""

    port: int = 0
    mails: list[ReceivedMail] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    reject: set[str] = field(default_factory=set)
    credentials: tuple[str, str] | None = None
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.lower() in self.reject:
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.mails.append(ReceivedMail(str(envelope.mail_from), list(envelope.rcpt_tos), envelope.content))
        async with self._arrived:
            self._arrived.notify_all()
        return "250 Message accepted for delivery"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login = (auth_data.login.decode(), auth_data.password.decode())
        self.logins.append(login)
        return AuthResult(success=login == self.credentials)

    async def wait_for(self, count: int, limit: float = 5.0) -> list[ReceivedMail]:
        """Until `count` mails have arrived (an event, not a sleep)."""
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.mails) >= count), limit)
        return self.mails


@contextlib.asynccontextmanager
async def running_smtp_server(
    port: int = 0,
    recorder: RecordingSMTP | None = None,
    credentials: tuple[str, str] | None = None,
    starttls: ssl.SSLContext | None = None,
) -> AsyncIterator[RecordingSMTP]:
    """Serve SMTP on 127.0.0.1: AUTH when `credentials` are given; with `starttls`, TLS is required first."""
    recorder = recorder or RecordingSMTP()
    recorder.credentials = credentials
    loop = asyncio.get_running_loop()
    sock = bound_socket(port=port)
    recorder.port = sock.getsockname()[1]

    def protocol() -> SMTP:
        options: dict[str, Any] = {}
        if credentials is not None:
            options = {"authenticator": recorder.authenticate, "auth_require_tls": starttls is not None}
        if starttls is not None:
            options.update(tls_context=starttls, require_starttls=True)
        return SMTP(recorder, hostname="localhost", ident="test-smtp", loop=loop, **options)

    server = await loop.create_server(protocol, sock=sock)
    try:
        yield recorder
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def smtp_server() -> AsyncIterator[RecordingSMTP]:
    async with running_smtp_server() as server:
        yield server
