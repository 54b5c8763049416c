"""Email on real parts: the outbox in SQLite, .eml files, and an aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme
from quart.typing import TestClientProtocol

from msev15 import create_app
from msev15.mail.render import render_message
from msev15.mail.sender import Mailer, recipient_allowed
from msev15.settings import Settings
from msev15.stores.order_rules import DatabaseUnavailable
from msev15.stores.orders import OrderRepository
from msev15.stores.sql import fetchval
from msev15.tools.mail import mail_tools
from msev15.tools.registry import ToolRegistry
from tests.conftest import MakeModelSettings, make_settings
from tests.engines import Engine
from tests.helpers import eventually, free_port
from tests.openai_server import Reply, ScriptedOpenAI
from tests.smtp_server import RecordingSMTP, running_smtp_server
from tests.test_orders import call, data

ALICE = "alice@example.com"


@pytest.fixture
async def smtp() -> AsyncIterator[RecordingSMTP]:
    async with running_smtp_server() as server:
        yield server


@pytest.fixture
async def repo(engine: Engine) -> AsyncIterator[OrderRepository]:
    opened = await engine.open(seed=True)
    yield opened
    await opened.close()


def smtp_options(port: int) -> dict[str, Any]:
    """The SMTP server on 127.0.0.1:`port`, plain (no STARTTLS) unless a test says otherwise."""
    return {"smtp_server": "127.0.0.1", "smtp_port": port, "smtp_use_tls": False}


def smtp_settings(tmp_path: Path, port: int, **extra: Any) -> Settings:
    return make_settings(tmp_path, **{**smtp_options(port), **extra})


@pytest.fixture
async def outbox_mailer(repo: OrderRepository, settings: Settings) -> AsyncIterator[Mailer]:
    mailer = Mailer(repo, settings)
    await mailer.start()
    yield mailer
    await mailer.close()


def registry_for(mailer: Mailer, repo: OrderRepository) -> ToolRegistry:
    tools = ToolRegistry(default_timeout=5.0)
    tools.register_all(mail_tools(mailer, repo))
    return tools


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())


def eml(settings: Settings, mail_id: str) -> EmailMessage:
    return parse((settings.outbox_dir / f"{mail_id}.eml").read_bytes())


# Recipients ---------------------------------------------------------------------------------------


def test_allowed_recipient_patterns() -> None:
    patterns = ["ops@shop.example", "*@staff.example", "@team.example"]
    assert recipient_allowed("OPS@shop.example", patterns)
    assert recipient_allowed("anyone@staff.example", patterns)
    assert recipient_allowed("x@team.example", patterns)
    assert not recipient_allowed("other@shop.example", patterns)
    assert not recipient_allowed("x@evilstaff.example", patterns)
    assert not recipient_allowed("x@staff.example.evil.com", patterns)
    assert not recipient_allowed("ops@shop.example", [])


async def test_send_email_only_to_customers_of_this_tenant_or_allowed(
    repo: OrderRepository, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, email_allowed_recipients="ops@shop.example, *@staff.example")
    mailer = Mailer(repo, settings)
    tools = registry_for(mailer, repo)
    message = {"subject": "Hello", "body": "Hi there"}
    assert data(await call(tools, "send_email", {"to": ALICE, **message}))["status"] == "undelivered"
    assert (await call(tools, "send_email", {"to": "Ops@Shop.example", **message})).ok
    assert (await call(tools, "send_email", {"to": "lead@staff.example", **message})).ok
    stranger = await call(tools, "send_email", {"to": "stranger@example.net", **message})
    assert not stranger.ok and "stranger@example.net is neither" in (stranger.error or "")
    # alice is a customer of the demo shop, not of acme.
    assert not (await call(tools, "send_email", {"to": ALICE, **message}, "acme")).ok
    async with repo.reading() as db:
        recipients = sorted(
            row[0] for row in await db.fetchall("SELECT recipient FROM outbox ORDER BY created_at")
        )
    assert recipients == [ALICE, "lead@staff.example", "ops@shop.example"]


async def test_subject_must_be_one_line(outbox_mailer: Mailer, repo: OrderRepository) -> None:
    tools = registry_for(outbox_mailer, repo)
    result = await call(
        tools, "send_email", {"to": ALICE, "subject": "Hi\r\nBcc: x@evil.example", "body": "b"}
    )
    assert not result.ok and "single line" in (result.error or "")


def test_email_tools_names_and_flags(outbox_mailer: Mailer, repo: OrderRepository) -> None:
    tools = {t.name: t for t in mail_tools(outbox_mailer, repo)}
    assert {n: set(t.spec()["function"]["parameters"]["properties"]) for n, t in tools.items()} == {
        "send_order_confirmation": {"order_id", "customer_email"},
        "send_email": {"to", "subject", "body"},
    }
    assert tools["send_email"].consequential and not tools["send_order_confirmation"].consequential


# Rendering and the outbox without SMTP -------------------------------------------------------------


async def test_confirmation_without_smtp_is_kept_in_the_outbox_as_eml(
    outbox_mailer: Mailer, repo: OrderRepository, settings: Settings
) -> None:
    tools = registry_for(outbox_mailer, repo)
    result = data(
        await call(tools, "send_order_confirmation", {"order_id": "ORD-1001", "customer_email": ALICE})
    )
    assert result["status"] == "undelivered" and result["to"] == ALICE
    row = await outbox_mailer.get(result["mail_id"])
    assert row is not None and row["status"] == "undelivered" and row["delivered_at"] is None
    message = eml(settings, result["mail_id"])
    assert message["To"] == ALICE and message["Subject"] == "Your order ORD-1001"
    assert message["Message-ID"] == row["message_id"]
    assert "support@example.com" in message["From"]
    text, html = parts(message)
    for part in (text, html):
        assert "ORD-1001" in part and "Noise Cancelling Headphones" in part and "$225.97" in part
    assert await outbox_mailer.check() == "outbox only"
    assert not list(settings.outbox_dir.glob(".*.part"))


async def test_confirmation_needs_the_owning_email(outbox_mailer: Mailer, repo: OrderRepository) -> None:
    tools = registry_for(outbox_mailer, repo)
    result = await call(tools, "send_order_confirmation", {"order_id": "ORD-1004", "customer_email": ALICE})
    assert not result.ok and result.error == "I could not find order ORD-1004 for that email"
    other = await call(
        tools, "send_order_confirmation", {"order_id": "ORD-1001", "customer_email": ALICE}, "acme"
    )
    assert not other.ok
    async with repo.reading() as db:
        assert await fetchval(db, "SELECT count(*) FROM outbox") == 0


async def test_customer_text_is_escaped_in_html(
    outbox_mailer: Mailer, repo: OrderRepository, settings: Settings
) -> None:
    evil = "<script>alert('x')</script> & <b>co</b>"
    order = await repo.create_order(
        "default", "eve@example.com", evil, [("SPK-PT300", 1)], f"{evil}\n2nd line"
    )
    tools = registry_for(outbox_mailer, repo)
    confirmation = data(
        await call(
            tools,
            "send_order_confirmation",
            {"order_id": order["order_id"], "customer_email": "eve@example.com"},
        )
    )
    text, html = parts(eml(settings, confirmation["mail_id"]))
    assert "<script>" not in html and "<b>co</b>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &lt;b&gt;co&lt;/b&gt;" in html
    assert "<br>2nd line" in html  # our own markup survives
    assert evil in text  # the text part is plain text, not HTML

    note = data(
        await call(tools, "send_email", {"to": "eve@example.com", "subject": "Re: <b>", "body": evil})
    )
    text, html = parts(eml(settings, note["mail_id"]))
    assert "<script>" not in html and "&lt;script&gt;" in html and evil in text


def test_free_form_body_becomes_paragraphs() -> None:
    rendered = render_message("S", "Line one\nline two\n\nSecond paragraph", "Support")
    assert "<p>Line one<br>line two</p>" in rendered.html
    assert "<p>Second paragraph</p>" in rendered.html
    assert rendered.text.startswith("Line one\nline two\n\nSecond paragraph")


# Delivery over SMTP ---------------------------------------------------------------------------


async def test_delivers_over_smtp_once_with_the_stored_message_id(
    repo: OrderRepository, tmp_path: Path, smtp: RecordingSMTP
) -> None:
    settings = smtp_settings(tmp_path, smtp.port)
    mailer = Mailer(repo, settings, retry_base=0.01)
    await mailer.start()
    try:
        tools = registry_for(mailer, repo)
        result = data(
            await call(tools, "send_order_confirmation", {"order_id": "ORD-1002", "customer_email": ALICE})
        )
        assert result["status"] == "queued"
        [mail] = await smtp.wait_for(1)
        assert mail.recipients == [ALICE] and mail.sender == "support@example.com"
        row = await mailer.get(result["mail_id"])
        assert row is not None
        assert mail.message["Message-ID"] == row["message_id"]
        assert "Keyboard" in parts(mail.message)[1]
        assert await mailer.check() == "ok"

        async def marked_delivered() -> bool:  # the SMTP server may see the mail before the row says so
            found = await mailer.get(result["mail_id"])
            return found is not None and found["status"] == "delivered"

        await eventually(marked_delivered, what="the outbox row marked delivered")
        # A second pass finds nothing to send.
        assert await mailer.deliver_due() is None
    finally:
        await mailer.close()
    row = await mailer.get(result["mail_id"])
    assert row is not None and row["status"] == "delivered" and row["attempts"] == 1
    assert not settings.outbox_dir.exists()  # .eml files are only for outbox-only mode
    assert len(smtp.mails) == 1


async def test_smtp_down_then_up_the_mail_arrives_exactly_once(repo: OrderRepository, tmp_path: Path) -> None:
    port = free_port()
    settings = smtp_settings(tmp_path, port)
    mailer = Mailer(repo, settings, retry_base=0.02, retry_max=0.05, timeout=2.0)
    mail = await mailer.enqueue("default", ALICE, render_message("Hello", "Body", "Support"))
    await mailer.deliver_due()  # the server is down: connection refused
    row = await mailer.get(mail.id)
    assert row is not None and row["status"] == "queued" and row["attempts"] == 1 and row["last_error"]
    assert (await mailer.check()).startswith("unavailable")
    async with running_smtp_server(port=port) as server:
        await mailer.start()  # the sender retries when the backoff is over
        try:
            [received] = await server.wait_for(1)
            assert received.message["Message-ID"] == mail.message_id
            await mailer.close()
            # Restarted senders and extra passes do not send it again.
            again = Mailer(repo, settings, retry_base=0.02)
            await asyncio.gather(again.deliver_due(), again.deliver_due())
        finally:
            await mailer.close()
        assert len(server.mails) == 1
    row = await mailer.get(mail.id)
    assert row is not None and row["status"] == "delivered" and row["attempts"] == 2


async def test_a_sent_mail_the_database_could_not_record_is_not_sent_again(
    repo: OrderRepository, tmp_path: Path, smtp: RecordingSMTP, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailer = Mailer(repo, smtp_settings(tmp_path, smtp.port))
    mail = await mailer.enqueue("default", ALICE, render_message("once", "b", "S"))
    record = mailer._delivered
    failures = [DatabaseUnavailable()]

    async def database_away_once(mail_id: str) -> None:
        if failures:
            raise failures.pop()
        await record(mail_id)

    monkeypatch.setattr(mailer, "_delivered", database_away_once)
    with pytest.raises(DatabaseUnavailable):
        await mailer.deliver_due()  # sent, but the database went away before it was marked
    assert len(smtp.mails) == 1
    assert await mailer.deliver_due() is None  # marked first, within the lease; nothing is due
    assert await Mailer(repo, smtp_settings(tmp_path, smtp.port)).deliver_due() is None  # nor elsewhere
    assert len(smtp.mails) == 1
    row = await mailer.get(mail.id)
    assert row is not None and row["status"] == "delivered" and row["attempts"] == 1


async def test_concurrent_senders_deliver_each_mail_once(
    repo: OrderRepository, tmp_path: Path, smtp: RecordingSMTP
) -> None:
    settings = smtp_settings(tmp_path, smtp.port)
    first, second = Mailer(repo, settings), Mailer(repo, settings)
    ids = [(await first.enqueue("default", ALICE, render_message(f"n{i}", "b", "S"))).id for i in range(3)]
    await asyncio.gather(first.deliver_due(), second.deliver_due())
    assert sorted(m.message["Subject"] for m in smtp.mails) == ["n0", "n1", "n2"]
    for mail_id in ids:
        row = await first.get(mail_id)
        assert row is not None and row["status"] == "delivered"


async def test_backoff_is_exponential_and_capped(repo: OrderRepository, tmp_path: Path) -> None:
    now = [1000.0]
    mailer = Mailer(
        repo, smtp_settings(tmp_path, free_port()), retry_base=1.0, retry_max=5.0, clock=lambda: now[0]
    )
    mail = await mailer.enqueue("default", ALICE, render_message("s", "b", "S"))
    waits = []
    for _ in range(5):
        wait = await mailer.deliver_due()
        assert wait is not None
        waits.append(wait)
        assert await mailer.deliver_due() == wait  # not due yet: no attempt
        now[0] += wait
    assert waits == [1.0, 2.0, 4.0, 5.0, 5.0]
    row = await mailer.get(mail.id)
    assert row is not None and row["attempts"] == 5 and row["status"] == "queued"


async def test_a_permanent_refusal_is_not_retried(
    repo: OrderRepository, tmp_path: Path, smtp: RecordingSMTP
) -> None:
    smtp.reject.add("gone@example.com")
    mailer = Mailer(repo, smtp_settings(tmp_path, smtp.port), retry_base=0.01)
    mail = await mailer.enqueue("default", "gone@example.com", render_message("s", "b", "S"))
    assert await mailer.deliver_due() is None
    row = await mailer.get(mail.id)
    assert row is not None and row["status"] == "failed" and "550" in row["last_error"]


async def test_logs_in_when_a_password_is_set(repo: OrderRepository, tmp_path: Path) -> None:
    async with running_smtp_server(credentials=("support@example.com", "s3cret")) as server:
        settings = smtp_settings(tmp_path, server.port, sender_password="s3cret")
        mailer = Mailer(repo, settings)
        await mailer.enqueue("default", ALICE, render_message("s", "b", "S"))
        await mailer.deliver_due()
        assert server.logins == [("support@example.com", "s3cret")]
        assert len(server.mails) == 1


async def test_starttls_with_a_verified_certificate_then_login(
    repo: OrderRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default production path: STARTTLS, the server's certificate verified, then AUTH inside TLS."""
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_tls)
    trusted = tmp_path / "test-ca.pem"
    authority.cert_pem.write_to_path(str(trusted))
    monkeypatch.setenv("SSL_CERT_FILE", str(trusted))  # the client trusts this CA through the default store
    async with running_smtp_server(
        credentials=("support@example.com", "s3cret"), starttls=server_tls
    ) as server:
        settings = smtp_settings(tmp_path, server.port, smtp_use_tls=True, sender_password="s3cret")
        mailer = Mailer(repo, settings)
        assert await mailer.check() == "ok"
        mail = await mailer.enqueue("default", ALICE, render_message("Over TLS", "hello", "Support"))
        await mailer.deliver_due()
        assert server.logins == [("support@example.com", "s3cret")]
        assert [m.message["Subject"] for m in server.mails] == ["Over TLS"]
        row = await mailer.get(mail.id)
        assert row is not None and row["status"] == "delivered"

        # Without STARTTLS the same server refuses the mail: it stays queued, nothing is lost.
        plain = Mailer(repo, smtp_settings(tmp_path, server.port, smtp_use_tls=False), retry_base=0.01)
        kept = await plain.enqueue("default", ALICE, render_message("Plain", "hello", "Support"))
        await plain.deliver_due()
        row = await plain.get(kept.id)
        assert row is not None and row["status"] == "queued" and len(server.mails) == 1


# Wired into the app ---------------------------------------------------------------------------


async def test_app_reports_smtp_and_sends_confirmations(
    make_model_settings: MakeModelSettings, smtp: RecordingSMTP, openai_server: ScriptedOpenAI, engine: Engine
) -> None:
    settings = make_model_settings(
        **smtp_options(smtp.port), require_confirmation=False, **await engine.settings_overrides()
    )
    openai_server.push(
        Reply.call("send_order_confirmation", {"order_id": "ORD-1001", "customer_email": ALICE}),
        Reply.say("sent"),
    )
    app = create_app(settings)
    async with app.test_app() as test_app:
        client: TestClientProtocol = test_app.test_client()
        ready = await (await client.get("/health/readiness")).get_json()
        assert ready["checks"]["smtp"] == "ok" and ready["checks"]["database"] == "ok"
        response = await client.post("/api/v1/chat", json={"session_id": "s", "message": "email me ORD-1001"})
        body = await response.get_json()
        assert response.status_code == 200, body
        assert [(c["name"], c["ok"]) for c in body["tool_calls"]] == [("send_order_confirmation", True)]
        [mail] = await smtp.wait_for(1)
        assert mail.message["Subject"] == "Your order ORD-1001"


async def test_unreachable_smtp_only_degrades_readiness(tmp_path: Path, engine: Engine) -> None:
    app = create_app(smtp_settings(tmp_path, free_port(), **await engine.settings_overrides()))
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/health/readiness")
        body = await response.get_json()
        assert body["checks"]["smtp"].startswith("unavailable")
        assert any(w.startswith("smtp") for w in body["warnings"])
        assert body["checks"]["database"] == "ok"
