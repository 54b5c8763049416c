"""PDF attachments read back with pypdf: the invoice of a confirmation and the prepaid return label.

On real parts: SQLite orders and outbox, .eml files in outbox-only mode, and an aiosmtpd server on
127.0.0.1 that is down first and up later.
"""

from __future__ import annotations

import io
import sqlite3
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from pypdf import PdfReader
from quart.typing import TestClientProtocol

from msev15 import create_app
from msev15.mail.documents import invoice_pdf, return_code, return_label_pdf
from msev15.mail.render import Shop, render_confirmation
from msev15.mail.sender import Mailer
from msev15.settings import Settings
from msev15.stores.order_schema import MIGRATIONS, SCHEMA_VERSION
from msev15.stores.orders import OrderRepository
from msev15.tools.mail import mail_tools
from msev15.tools.orders import order_tools
from msev15.tools.registry import ToolRegistry
from tests.conftest import MakeModelSettings
from tests.engines import Engine
from tests.helpers import free_port
from tests.openai_server import Reply, ScriptedOpenAI
from tests.smtp_server import running_smtp_server
from tests.test_mailer import eml, parse, smtp_settings
from tests.test_orders import call, data

ALICE = "alice@example.com"
DEMO_SHOP = Shop("Demo Shop", "Returns Department\n100 Warehouse Way\nSpringfield, IL 62701\nUnited States")


@pytest.fixture
async def repo(engine: Engine) -> AsyncIterator[OrderRepository]:
    opened = await engine.open(seed=True)
    yield opened
    await opened.close()


def tools_for(mailer: Mailer, repo: OrderRepository) -> ToolRegistry:
    tools = ToolRegistry(default_timeout=10.0)
    tools.register_all(order_tools(repo, mailer))
    tools.register_all(mail_tools(mailer, repo))
    return tools


def pdf_text(data: bytes) -> str:
    reader = PdfReader(io.BytesIO(data))
    return "\n".join(page.extract_text() for page in reader.pages)


def attachments(message: EmailMessage) -> dict[str, bytes]:
    found = {}
    for part in message.iter_attachments():
        assert isinstance(part, EmailMessage) and part.get_content_type() == "application/pdf"
        payload = part.get_content()
        assert isinstance(payload, bytes)
        found[str(part.get_filename())] = payload
    return found


async def test_confirmation_carries_the_invoice_pdf(repo: OrderRepository, settings: Settings) -> None:
    tools = tools_for(Mailer(repo, settings), repo)
    result = data(
        await call(tools, "send_order_confirmation", {"order_id": "ORD-1001", "customer_email": ALICE})
    )
    assert result["attachments"] == ["invoice-ORD-1001.pdf"] and result["status"] == "undelivered"
    message = eml(settings, result["mail_id"])  # outbox-only mode: the .eml file holds the attachment
    [(name, pdf)] = attachments(message).items()
    assert name == "invoice-ORD-1001.pdf" and pdf.startswith(b"%PDF-")
    text = pdf_text(pdf)
    order = await repo.get_order("default", "ORD-1001", ALICE)
    for expected in (
        "Demo Shop",
        "Invoice",
        "ORD-1001",
        order["created_at"][:10],
        "Alice Martin",
        ALICE,
        "Noise Cancelling Headphones",
        "HDP-NC100",
        "$225.97",
        *[line.strip() for line in order["shipping_address"].replace(",", "\n").splitlines() if line.strip()],
    ):
        assert expected in text, (expected, text)
    body = message.get_body(("plain",))
    assert body is not None and "invoice-ORD-1001.pdf" in str(body.get_content())
    # Rendering is deterministic: the order alone gives the same bytes again.
    assert invoice_pdf(order, "Demo Shop") == pdf


async def test_an_approved_return_mails_instructions_with_a_prepaid_label(
    repo: OrderRepository, settings: Settings
) -> None:
    tools = tools_for(Mailer(repo, settings), repo)
    result = data(
        await call(
            tools, "request_return", {"order_id": "ORD-1003", "customer_email": ALICE, "reason": "too big"}
        )
    )
    # The tool's own facts stay: the order, now return_requested; the label mail is added.
    assert result["order_id"] == "ORD-1003" and result["status"] == "return_requested"
    assert result["return_reason"] == "too big"
    label = result["return_label"]
    code = return_code("default", "ORD-1003")
    assert label["return_code"] == code and label["to"] == ALICE
    assert label["attachments"] == ["return-label-ORD-1003.pdf"]

    message = eml(settings, label["mail_id"])
    assert message["To"] == ALICE and "ORD-1003" in str(message["Subject"])
    text_part = message.get_body(("plain",))
    assert text_part is not None and code in str(text_part.get_content())
    pdf = attachments(message)["return-label-ORD-1003.pdf"]
    text = pdf_text(pdf)
    order = await repo.get_order("default", "ORD-1003", ALICE)
    for expected in ("PREPAID RETURN LABEL", "ORD-1003", code, f"*{code}*", "Alice Martin", "Demo Shop"):
        assert expected in text, (expected, text)
    for line in DEMO_SHOP.return_address.splitlines():
        assert line in text
    assert order["shipping_address"].split(",")[0].split("\n")[0].strip() in text
    assert return_label_pdf(order, code, DEMO_SHOP.name, DEMO_SHOP.return_address) == pdf


async def test_a_refused_return_mails_nothing(repo: OrderRepository, settings: Settings) -> None:
    tools = tools_for(Mailer(repo, settings), repo)
    refused = await call(tools, "request_return", {"order_id": "ORD-1001", "customer_email": ALICE})
    assert not refused.ok  # pending: not delivered yet
    async with repo.reading() as db:
        row = await db.fetchone("SELECT count(*) FROM outbox")
    assert row is not None and row[0] == 0
    assert not settings.outbox_dir.exists()


async def test_after_an_smtp_outage_the_delivered_mail_is_the_queued_one(
    repo: OrderRepository, tmp_path: Path
) -> None:
    port = free_port()
    settings = smtp_settings(tmp_path, port)
    mailer = Mailer(repo, settings, retry_base=0.02, retry_max=0.05, timeout=2.0)
    tools = tools_for(mailer, repo)
    confirmation = data(
        await call(tools, "send_order_confirmation", {"order_id": "ORD-1002", "customer_email": ALICE})
    )
    label = data(await call(tools, "request_return", {"order_id": "ORD-1003", "customer_email": ALICE}))[
        "return_label"
    ]
    await mailer.deliver_due()  # nothing listens: both stay queued
    for mail_id in (confirmation["mail_id"], label["mail_id"]):
        row = await mailer.get(mail_id)
        assert row is not None and row["status"] == "queued" and row["last_error"]
    async with repo.reading() as db:
        queued = {row["id"]: bytes(row["raw"]) for row in await db.fetchall("SELECT id, raw FROM outbox")}

    async with running_smtp_server(port=port) as server:
        await mailer.start()
        try:
            received = await server.wait_for(2)
        finally:
            await mailer.close()
    by_id = {mail.message["Message-ID"]: mail for mail in received}
    for mail_id, raw in queued.items():
        stored = parse(raw)
        arrived = by_id[stored["Message-ID"]].message
        assert arrived.as_bytes() == stored.as_bytes()  # the same message, attachments and all
        assert attachments(arrived) == attachments(stored)
        row = await mailer.get(mail_id)
        assert row is not None and row["status"] == "delivered"

    def arrived_pdfs(mail_id: str) -> dict[str, bytes]:
        return attachments(by_id[parse(queued[mail_id])["Message-ID"]].message)

    assert "ORD-1002" in pdf_text(arrived_pdfs(confirmation["mail_id"])["invoice-ORD-1002.pdf"])
    assert "PREPAID RETURN LABEL" in pdf_text(arrived_pdfs(label["mail_id"])["return-label-ORD-1003.pdf"])


def test_text_outside_latin1_is_drawn_not_refused() -> None:
    order = {
        "order_id": "ORD-2001",
        "status": "pending",
        "customer_email": "zoe@example.com",
        "customer_name": "Zoë Łukasz 王",
        "shipping_address": "Grüner Weg 1\n00-950 Warszawa — Polska",
        "items": [
            {
                "sku": "X-1",
                "name": "Ünïcode “quoted” ✓",
                "quantity": 1,
                "unit_price": "$1.00",
                "line_total": "$1.00",
            }
        ],
        "total": "$1.00",
        "created_at": "2026-01-02T03:04:05Z",
        "updated_at": "2026-01-03T03:04:05Z",
    }
    text = pdf_text(
        render_confirmation(order, "Support", Shop("Ścisły Shop", "1 Rue Hélène")).attachments[0].data
    )
    assert "Zoë" in text and "Grüner Weg 1" in text and "ORD-2001" in text and "2026-01-02" in text
    label = pdf_text(return_label_pdf(order, "RET-ABCD-EFGH", "Ścisły Shop", "1 Rue Hélène"))
    assert "Scisly Shop" in label and "1 Rue Hélène" in label and "Zoë Lukasz ?" in label
    assert "Warszawa - Polska" in label


async def test_an_existing_database_is_migrated_with_the_demo_return_address(tmp_path: Path) -> None:
    path = tmp_path / "orders.db"
    with sqlite3.connect(path) as db:  # a database as the previous release left it
        for statements in MIGRATIONS[:2]:
            for statement in statements:
                db.execute(statement)
        db.execute("INSERT INTO tenants VALUES ('default', 'Demo Shop', '2026-01-01T00:00:00Z')")
        db.execute("INSERT INTO tenants VALUES ('acme', 'Acme', '2026-01-01T00:00:00Z')")
        db.execute("PRAGMA user_version = 2")
    repo = await OrderRepository.open(path, seed=True)
    try:
        assert await repo.shop("default") == (DEMO_SHOP.name, DEMO_SHOP.return_address)
        assert await repo.shop("acme") == ("Acme", "")
        assert await repo.shop("nobody") == ("nobody", "")
        async with repo.reading() as db:
            row = await db.fetchone("PRAGMA user_version")
        assert row is not None and row[0] == SCHEMA_VERSION == 3
    finally:
        await repo.close()


async def test_the_app_mails_the_label_when_the_customer_approves_the_return(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI
) -> None:
    settings = make_model_settings()
    openai_server.push(
        Reply.call("request_return", {"order_id": "ORD-1003", "customer_email": ALICE, "reason": "broken"}),
        Reply.say("Shall I go ahead?"),
    )
    app = create_app(settings)
    async with app.test_app() as test_app:
        client: TestClientProtocol = test_app.test_client()
        asked = await (
            await client.post("/api/v1/chat", json={"session_id": "r", "message": "return ORD-1003"})
        ).get_json()
        [approval] = asked["approvals_required"]
        assert not settings.outbox_dir.exists()  # nothing is mailed before the customer says yes
        openai_server.push(Reply.say("Done: the label is on its way."))
        response = await client.post(
            "/api/v1/chat", json={"session_id": "r", "approvals": [{"id": approval["id"], "approve": True}]}
        )
        assert response.status_code == 200, await response.get_data(as_text=True)
    [label_mail] = [parse(path.read_bytes()) for path in settings.outbox_dir.glob("*.eml")]
    assert "return-label-ORD-1003.pdf" in attachments(label_mail)
