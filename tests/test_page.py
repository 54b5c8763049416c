"""The chat page in a real browser: Playwright driving Debian's chromium against real Hypercorn."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, Route, async_playwright, expect

from msev15 import create_app
from msev15.settings import Settings
from tests.conftest import make_settings
from tests.helpers import eventually, require_binary
from tests.openai_server import Reply, ScriptedOpenAI
from tests.servers import serve_on_loopback

CHROMIUM = require_binary("/usr/bin/chromium", "chromium")  # skips the module (fails it in CI) when absent
ARTIFACTS = Path(__file__).parent / "artifacts"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
SLOW = " ".join(f"word{i}" for i in range(80))
NO_WEBSOCKET = "Object.defineProperty(window, 'WebSocket', {value: undefined, configurable: true});"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        found = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield found
        await found.close()


async def _page(browser: Browser, **context: Any) -> tuple[Page, list[str]]:
    ctx = await browser.new_context(viewport={"width": 1280, "height": 820}, **context)
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(10_000)
    return page, errors


@pytest.fixture
async def base(model_settings: Settings) -> AsyncIterator[str]:
    """The app with the scripted OpenAI-compatible model, on loopback."""
    async with serve_on_loopback(create_app(model_settings)) as port:
        yield f"http://127.0.0.1:{port}"


async def _history(base: str, session_id: str, tenant: str = "default") -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=base) as http:
        response = await http.get(f"/api/v1/sessions/{session_id}/history", params={"tenant_id": tenant})
        return response.status_code, response.json()


async def _session_id(page: Page) -> str:
    """The open conversation's id, as the sidebar marks it (the page keeps one per user)."""
    found = await page.locator("#session-list .session.current").get_attribute("data-session-id")
    assert found
    return found


async def _send(page: Page, text: str) -> None:
    box = page.get_by_label("Message", exact=True)
    await box.fill(text)
    await box.press("Enter")


def _answers(page: Page) -> Any:
    return page.locator("#log .msg.assistant")


async def test_conversation_streams_shows_tools_and_survives_reload(
    base: str, browser: Browser, openai_server: ScriptedOpenAI
) -> None:
    answer = "It is **noon** in London right now. Anything else I can check for you today?"
    openai_server.push(Reply.call("get_current_time"), Reply.say(answer, delay=0.05))
    page, errors = await _page(browser)
    await page.goto(base)
    await expect(page.locator("#connection")).to_have_attribute("data-state", "ws")
    await expect(page.get_by_role("heading", name="How can we help today?")).to_be_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "welcome-desktop.png", animations="disabled")

    await _send(page, "What time is it?\nIn London, please.")
    await expect(page.locator("#log .msg.user .plain")).to_have_text("What time is it?\nIn London, please.")
    step = page.locator(".tool-step[data-tool='get_current_time']")
    await expect(step).to_have_attribute("data-state", "ok")
    # tokens arrive one by one: the answer is visibly partial while it streams
    await page.wait_for_function(
        """() => { const a = document.querySelector('#log .msg.assistant[data-state="streaming"] .md');
                   return a && a.textContent.length > 0 && !a.textContent.includes('today?'); }"""
    )
    await expect(page.locator("#stop")).to_be_visible()
    await expect(_answers(page).last).to_have_attribute("data-state", "done")
    await expect(_answers(page).last.locator("strong")).to_have_text("noon")
    await expect(_answers(page).last.locator(".md")).to_have_text(answer.replace("**", ""))
    await expect(page.locator("#send")).to_be_visible()

    await step.locator("summary").click()
    await expect(step.locator(".step-args")).to_have_text("{}")
    await expect(step.locator(".step-result")).to_contain_text('"utc"')

    await expect(page.locator("#session-list .session.current .session-title")).to_have_text(
        "What time is it? In London, please."
    )
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "conversation-desktop.png")
    await page.emulate_media(color_scheme="dark")
    await page.screenshot(path=ARTIFACTS / "conversation-desktop-dark.png")
    await page.emulate_media(color_scheme="light")
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.screenshot(path=ARTIFACTS / "conversation-phone.png")
    await page.get_by_role("button", name="Show conversations").click()
    await expect(page.locator("#sidebar")).to_be_visible()
    await page.screenshot(path=ARTIFACTS / "conversation-phone-menu.png", animations="disabled")
    await page.set_viewport_size({"width": 1280, "height": 820})

    await page.reload()
    await expect(page.locator("#log .msg.user .plain")).to_have_text("What time is it?\nIn London, please.")
    await expect(_answers(page).last.locator(".md")).to_have_text(answer.replace("**", ""))
    await expect(page.locator(".tool-step[data-tool='get_current_time']")).to_have_attribute(
        "data-state", "ok"
    )
    assert errors == []


async def test_sessions_switch_and_delete(base: str, browser: Browser) -> None:
    page, errors = await _page(browser)
    await page.goto(base)
    await _send(page, "first question")
    await expect(_answers(page).last.locator(".md")).to_have_text("Echo: first question")
    first = await _session_id(page)

    await page.get_by_role("button", name="New conversation", exact=True).click()
    await expect(page.locator("#log .msg")).to_have_count(0)
    await _send(page, "second question")
    await expect(_answers(page).last.locator(".md")).to_have_text("Echo: second question")
    second = await _session_id(page)
    assert second != first
    items = page.locator("#session-list .session")
    await expect(items).to_have_count(2)

    await page.locator(f"#session-list [data-session-id='{first}'] .session-open").click()
    await expect(page.locator("#log .msg.user .plain")).to_have_text("first question")
    await expect(_answers(page).locator(".md")).to_have_text("Echo: first question")
    await expect(page.locator("#chat-title")).to_have_text("first question")

    delete = page.locator(f"#session-list [data-session-id='{second}'] .session-delete")
    await delete.click()
    await expect(delete).to_have_text("Delete?")
    await delete.click()
    await expect(items).to_have_count(1)
    assert (await _history(base, second))[0] == 404
    assert (await _history(base, first))[0] == 200
    # deleting the open conversation moves to another one
    await page.locator(f"#session-list [data-session-id='{first}'] .session-delete").click()
    await page.locator(f"#session-list [data-session-id='{first}'] .session-delete").click()
    await expect(page.locator("#session-list .session")).to_have_count(1)
    await expect(page.locator("#session-list .session-title")).to_have_text("New conversation")
    await expect(page.get_by_role("heading", name="How can we help today?")).to_be_visible()
    assert (await _history(base, first))[0] == 404
    assert errors == []


async def test_stop_button_cancels_the_answer(
    base: str, browser: Browser, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(Reply.say(SLOW, delay=0.05))
    page, errors = await _page(browser)
    await page.goto(base)
    await expect(page.locator("#connection")).to_have_attribute("data-state", "ws")
    await _send(page, "tell me a long story")
    await expect(_answers(page).last.locator(".md")).to_contain_text("word2")
    await page.get_by_role("button", name="Stop the answer").click()
    await expect(_answers(page).last).to_have_attribute("data-state", "interrupted")
    await expect(_answers(page).last.locator(".tag")).to_have_text("Stopped")
    await expect(page.locator("#send")).to_be_visible()
    shown = await _answers(page).last.locator(".md").text_content() or ""
    status, body = await _history(base, await _session_id(page))
    assert status == 200
    stored = body["messages"][-1]
    assert stored["interrupted"] is True and stored["content"].startswith("word0 word1 word2")
    assert "word79" not in stored["content"] and shown.strip() in stored["content"]
    await page.reload()
    await expect(_answers(page).last).to_have_attribute("data-state", "interrupted")
    assert errors == []


async def test_falls_back_to_sse_without_websocket(
    base: str, browser: Browser, openai_server: ScriptedOpenAI
) -> None:
    page, errors = await _page(browser)
    await page.add_init_script(NO_WEBSOCKET)
    await page.goto(base)
    await expect(page.locator("#connection")).to_have_attribute("data-state", "sse")
    await _send(page, "hello over http")
    await expect(_answers(page).last.locator(".md")).to_have_text("Echo: hello over http")
    await expect(_answers(page).last).to_have_attribute("data-state", "done")

    openai_server.push(Reply.say(SLOW, delay=0.05))
    await _send(page, "a long one")
    await expect(_answers(page).last.locator(".md")).to_contain_text("word2")
    await page.keyboard.press("Escape")  # Esc stops too; over SSE it aborts the request
    await expect(_answers(page).last).to_have_attribute("data-state", "interrupted")
    session = await _session_id(page)

    async def interrupted_is_stored() -> bool:
        status, body = await _history(base, session)
        return status == 200 and body["messages"][-1].get("interrupted") is True

    await eventually(interrupted_is_stored)  # the server notices the aborted request asynchronously
    assert errors == []


async def test_markup_in_messages_is_shown_as_text(base: str, browser: Browser) -> None:
    page, errors = await _page(browser)
    await page.add_init_script("window.xssHit = 0;")
    await page.goto(base)
    payload = '<img src=x onerror="window.xssHit=1"> <script>window.xssHit=2</script>'
    payload += " [x](javascript:window.xssHit=3)"
    await _send(page, payload)
    await expect(page.locator("#log .msg.user .plain")).to_have_text(payload)
    await expect(_answers(page).last).to_have_attribute("data-state", "done")
    await expect(_answers(page).last.locator(".md")).to_have_text(f"Echo: {payload}")
    assert await page.locator("#log img, #log script, #log a").count() == 0
    await page.reload()
    await expect(_answers(page).last.locator(".md")).to_have_text(f"Echo: {payload}")
    assert await page.locator("#log img, #log script, #log a").count() == 0
    assert await page.evaluate("window.xssHit") == 0
    assert errors == []


def _sse(*events: dict[str, Any]) -> str:
    return "".join(
        f"data: {json.dumps({**e, 'session_id': 's', 'tenant_id': 'default'})}\n\n" for e in events
    )


async def test_approval_card_confirms_with_an_approvals_request(base: str, browser: Browser) -> None:
    """The server side of approvals is not built yet: the stream is scripted with page.route."""
    sent: list[dict[str, Any]] = []
    args = {"order_id": "ORD-1001", "customer_email": "alice@example.com", "reason": "ordered by mistake"}

    async def fake_stream(route: Route) -> None:
        body = json.loads(route.request.post_data or "{}")
        sent.append(body)
        if "approvals" not in body:
            events = _sse(
                {"type": "tool_call", "id": "c1", "name": "get_order", "arguments": args},
                {"type": "tool_result", "id": "c1", "name": "get_order", "ok": True, "content": "{}"},
                {
                    "type": "approval_required",
                    "id": "ap-1",
                    "name": "cancel_order",
                    "arguments": args,
                    "summary": "Cancel order ORD-1001 (reason: ordered by mistake)",
                },
                {"type": "token", "content": "Please confirm the cancellation."},
                {
                    "type": "done",
                    "message": "Please confirm the cancellation.",
                    "message_count": 2,
                    "request_id": "r",
                },
            )
        else:
            events = _sse(
                {
                    "type": "tool_result",
                    "id": "ap-1",
                    "name": "cancel_order",
                    "ok": True,
                    "content": "cancelled",
                },
                {"type": "token", "content": "Order ORD-1001 is cancelled."},
                {
                    "type": "done",
                    "message": "Order ORD-1001 is cancelled.",
                    "message_count": 4,
                    "request_id": "r",
                },
            )
        await route.fulfill(status=200, content_type="text/event-stream", body=events)

    page, errors = await _page(browser)
    await page.add_init_script(NO_WEBSOCKET)
    await page.route("**/api/v1/chat/stream", fake_stream)
    await page.goto(base)
    await _send(page, "Cancel ORD-1001, I'm alice@example.com")
    card = page.locator(".approval-card")
    await expect(card.locator(".approval-summary")).to_have_text(
        "Cancel order ORD-1001 (reason: ordered by mistake)"
    )
    await expect(card).to_have_attribute("data-state", "pending")
    confirm = card.get_by_role("button", name="Confirm")
    await confirm.focus()  # keyboard reachable
    await page.keyboard.press("Enter")
    await expect(card).to_have_attribute("data-state", "done")
    await expect(_answers(page).last.locator(".md")).to_have_text("Order ORD-1001 is cancelled.")
    assert sent[1]["approvals"] == [{"id": "ap-1", "approve": True}] and "message" not in sent[1]
    assert sent[1]["session_id"] == sent[0]["session_id"]
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "approval-card.png")
    assert errors == []


async def test_api_key_prompt_and_offline_banner(browser: Browser, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_keys="key1:tenant-a")
    async with serve_on_loopback(create_app(settings)) as port:
        page, errors = await _page(browser)
        await page.goto(f"http://127.0.0.1:{port}")
        await expect(page.locator("#banner-model")).to_contain_text("offline")
        # no public chat and no link: the page says where to start, and offers staff the key
        gate = page.locator(".gate")
        await expect(gate.get_by_role("heading")).to_have_text("Open the chat from the shop")
        await expect(page.get_by_label("Message", exact=True)).to_be_disabled()
        await expect(page.locator("#connection")).to_have_attribute("data-state", "locked")
        dialog = page.get_by_role("dialog", name="API key")
        await expect(dialog).to_be_hidden()
        await gate.get_by_role("button", name="Shop staff: use an API key…").click()
        await expect(dialog).to_be_visible()
        await dialog.get_by_label("Key").fill("key1")
        await dialog.get_by_role("button", name="Save").click()
        await expect(dialog).to_be_hidden()
        assert await page.evaluate("localStorage.getItem('msev15.apiKey')") == "key1"
        tenant = page.get_by_label("Shop (tenant)")
        await tenant.fill("tenant-a")
        await tenant.press("Enter")
        await expect(page.locator("#connection")).to_have_attribute("data-state", "ws")
        await _send(page, "hello")
        await expect(_answers(page).last).to_have_attribute("data-state", "done")
        await expect(_answers(page).last.locator(".md")).to_contain_text("offline")
        await expect(page.locator("#identity")).to_have_text("Staff view: every conversation of “tenant-a”")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=ARTIFACTS / "staff-key.png", animations="disabled")
        await page.reload()
        await expect(dialog).to_be_hidden()
        await expect(page.locator("#log .msg.user .plain")).to_have_text("hello")
        await page.context.close()  # before the server stops, so no socket is left open
        assert errors == []


async def test_a_slow_history_load_never_wipes_an_answer_sent_meanwhile(
    base: str, browser: Browser, openai_server: ScriptedOpenAI
) -> None:
    """The page loads the session's history at start; a message sent before that answer arrives
    (a slow network, a busy server) keeps its bubble and its answer when the history lands late."""
    openai_server.push(Reply.say("Here to help."))
    page, errors = await _page(browser)
    held: list[Route] = []

    async def hold(route: Route) -> None:
        held.append(route)  # answered below, once the message has been sent and answered

    await page.route("**/api/v1/sessions/*/history*", hold)
    await page.goto(base)
    await expect(page.locator("#connection")).to_have_attribute("data-state", "ws")
    await eventually(lambda: bool(held), what="the page to ask for the history")
    await _send(page, "hello")
    await expect(_answers(page).last).to_have_attribute("data-state", "done")
    for route in held:
        await route.fulfill(status=404, json={"error": {"type": "not_found", "message": "no such session"}})
    await page.unroute("**/api/v1/sessions/*/history*")
    await page.wait_for_function("() => document.readyState === 'complete'")
    await page.evaluate("() => new Promise((done) => setTimeout(done, 0))")  # the late answer is handled
    await expect(page.locator("#log .msg.user .plain")).to_have_text("hello")
    await expect(_answers(page).last.locator(".md")).to_contain_text("Here to help.")
    await expect(page.get_by_role("heading", name="How can we help today?")).to_have_count(0)
    await page.context.close()
    assert errors == []


async def test_offline_model_approval_card_survives_reload_and_confirms(
    settings: Settings, browser: Browser
) -> None:
    """End to end with the real approvals: the card comes back after a reload, Confirm runs it once."""
    async with serve_on_loopback(create_app(settings)) as port:
        base = f"http://127.0.0.1:{port}"
        page, errors = await _page(browser)
        await page.goto(base)
        await expect(page.locator("#connection")).to_have_attribute("data-state", "ws")
        await _send(page, "Cancel ORD-1001, I'm alice@example.com")
        card = page.locator(".approval-card")
        await expect(card.locator(".approval-summary")).to_contain_text("Cancel order ORD-1001")
        await expect(card).to_have_attribute("data-state", "pending")
        await page.reload()
        await expect(card).to_have_attribute("data-state", "pending")
        await card.get_by_role("button", name="Confirm").click()
        await expect(card).to_have_attribute("data-state", "done")
        await expect(page.locator(".tool-step[data-tool='cancel_order']").last).to_have_attribute(
            "data-state", "ok"
        )
        await expect(_answers(page).last).to_have_attribute("data-state", "done")
        await page.reload()
        await expect(page.locator(".approval-card")).to_have_count(0)
        await page.context.close()
        assert errors == []


async def test_typing_yes_does_what_the_confirm_button_does(settings: Settings, browser: Browser) -> None:
    """A typed "yes" approves the card's action on the server, and the card ends as after Confirm."""
    async with serve_on_loopback(create_app(settings)) as port:
        base = f"http://127.0.0.1:{port}"
        page, errors = await _page(browser)
        await page.goto(base)
        await expect(page.locator("#connection")).to_have_attribute("data-state", "ws")
        await _send(page, "Cancel ORD-1001, I'm alice@example.com")
        card = page.locator(".approval-card")
        await expect(card).to_have_attribute("data-state", "pending")
        await expect(_answers(page).last.locator(".md").last).to_contain_text('Reply "yes" to go ahead')

        await _send(page, "yes")
        await expect(card).to_have_attribute("data-state", "done")
        await expect(card.locator(".approval-outcome")).to_have_text("Done.")
        await expect(card.get_by_role("button", name="Confirm")).to_be_hidden()  # answered, as after a click
        step = page.locator(".tool-step[data-tool='cancel_order']")
        await expect(step).to_have_attribute("data-state", "ok")
        await expect(_answers(page).last).to_have_attribute("data-state", "done")
        await expect(_answers(page).last.locator(".md")).to_contain_text("order ORD-1001 is cancelled")
        _, history = await _history(base, await _session_id(page))
        assert history["messages"][-2]["content"] == "yes"
        assert history["messages"][-1]["tool_calls"][0]["decision"] == "approved"
        assert "pending_approvals" not in history["metadata"]

        # A typed "no" declines, and the card says so; nothing changes.
        await _send(page, "Cancel ORD-1004, I'm bob@example.com")
        second = page.locator(".approval-card").last
        await expect(second).to_have_attribute("data-state", "pending")
        await _send(page, "No.")
        await expect(second).to_have_attribute("data-state", "declined")
        await expect(second.locator(".approval-outcome")).to_have_text("Declined: nothing was changed.")
        await expect(_answers(page).last.locator(".md")).to_contain_text("I did not cancel order ORD-1004")
        await page.reload()
        await expect(page.locator(".approval-card")).to_have_count(0)  # nothing is left pending
        await page.context.close()
        assert errors == []
