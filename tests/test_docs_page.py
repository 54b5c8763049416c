"""The /docs page in Chromium: vendored Swagger UI under the page's CSP; Authorize takes an API key and
"Try it out" sends a real chat to the service."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from msev15 import ROOT, create_app
from tests.conftest import make_settings
from tests.helpers import require_binary
from tests.servers import serve_on_loopback

CHROMIUM = require_binary("/usr/bin/chromium", "chromium")  # skips the module (fails it in CI) when absent
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
KEY = "docs-test-key"
VENDOR = ROOT / "static" / "vendor" / "swagger-ui"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        found = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield found
        await found.close()


@pytest.fixture
async def base(tmp_path: Path) -> AsyncIterator[str]:
    """The service with an API key, so Authorize matters."""
    async with serve_on_loopback(create_app(make_settings(tmp_path, api_keys=f"{KEY}:default"))) as port:
        yield f"http://127.0.0.1:{port}"


async def open_docs(browser: Browser, base: str) -> tuple[Page, dict[str, list[Any]]]:
    """The page, with everything that went wrong or left the origin recorded."""
    page = await (await browser.new_context(viewport={"width": 1280, "height": 900})).new_page()
    page.set_default_timeout(15_000)
    seen: dict[str, list[Any]] = {"errors": [], "foreign": [], "violations": []}
    page.on("pageerror", lambda exc: seen["errors"].append(str(exc)))
    page.on(
        "request",
        lambda request: (
            None if request.url.startswith((base, "data:")) else seen["foreign"].append(request.url)
        ),
    )
    page.on(
        "console",
        lambda message: (
            seen["violations"].append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    response = await page.goto(f"{base}/docs")
    assert response is not None and response.status == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "style-src 'self';" in csp and "unsafe" not in csp
    await expect(page.locator("#operations-chat-post_chat")).to_be_visible()
    return page, seen


async def test_swagger_ui_renders_every_operation_from_local_files(browser: Browser, base: str) -> None:
    page, seen = await open_docs(browser, base)
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text("MSEv15E2E")
    for operation in (
        "chat-post_chat",
        "chat-post_chat_stream",
        "sessions-get_list_sessions",
        "health-get_readiness",
    ):
        await expect(page.locator(f"#operations-{operation}")).to_be_visible()
    assert seen == {"errors": [], "foreign": [], "violations": []}


async def test_authorize_with_an_api_key_then_try_out_a_chat(browser: Browser, base: str) -> None:
    page, seen = await open_docs(browser, base)
    await page.locator(".auth-wrapper button.authorize").click()
    scheme = page.locator(".auth-container").filter(has_text="X-API-Key")
    await scheme.locator("input").fill(KEY)
    await scheme.locator("button.authorize").click()  # its accessible name: "Apply credentials"
    await expect(scheme.locator("button", has_text="Logout")).to_be_visible()
    await scheme.locator("button.btn-done").click()

    operation = page.locator("#operations-chat-post_chat")
    await operation.locator(".opblock-summary").click()
    await operation.locator("button.try-out__btn").click()
    body = {"session_id": "docs-1", "message": "What time is it?"}
    await operation.locator("textarea.body-param__text").fill(json.dumps(body))
    async with page.expect_response(lambda r: r.url == f"{base}/api/v1/chat") as answered:
        await operation.locator("button.execute").click()
    response = await answered.value
    assert response.status == 200, await response.text()
    assert response.request.headers.get("x-api-key") == KEY  # the key went where the scheme says
    live = operation.locator(".live-responses-table .response")
    await expect(live.locator(".response-col_status")).to_contain_text("200")
    await expect(live.locator(".response-col_description")).to_contain_text('"session_id": "docs-1"')
    assert seen == {"errors": [], "foreign": [], "violations": []}


def test_the_vendored_files_record_their_version_and_licence() -> None:
    version = (VENDOR / "VERSION").read_text().strip()
    readme = (VENDOR / "README.md").read_text()
    assert version in readme and "Apache-2.0" in readme and (VENDOR / "LICENSE").exists()
    assert f"?v={version}" in (ROOT / "templates" / "docs.html").read_text()
    bundle = (VENDOR / "swagger-ui-bundle.js").read_text()
    assert "SwaggerUIBundle" in bundle
    shipped = {p.name for p in VENDOR.iterdir()}
    assert shipped == {"README.md", "VERSION", "LICENSE", "NOTICE", "swagger-ui-bundle.js",
                       "swagger-ui-bundle.js.LICENSE.txt", "swagger-ui.css"}  # fmt: skip
    template = (ROOT / "templates" / "docs.html").read_text()
    assert "http://" not in template and "https://" not in template and "<script>" not in template
