"""The chat page picks an answer up again after a network drop, in real Chromium (issue 16, item 4).

The page streams a slow scripted answer through a loopback relay, and the network drops in the
middle of it:

- "offline": Playwright's `context.set_offline(True)`, then `False`. In Chromium (156) this does
  not close a connection that is already open: it holds a WebSocket's frames until the network is
  back and lets a streaming fetch go on. What drops the connection is the page itself, on the
  browser's `online` event, as Chromium fails requests when the network changes: the socket
  starts afresh, the HTTP stream is asked for again.
- "cut": the relay between the browser and the service closes every connection, as a dropped
  network does (the page sees the socket close, the fetch fail); the page is online throughout.
- "offline+cut": both, the customer's train in a tunnel: the connections die while every new
  one fails at once, until the network is back.

Every time the customer must see the whole answer once. A recorder in the page checks every text
the answer showed while it streamed was a beginning of the model's text (a repeated or a missing
piece would break that), because the final `done` re-renders the whole text anyway.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, Request, WebSocket, expect

from msev15 import create_app
from msev15.settings import Settings
from tests.conftest import MakeModelSettings
from tests.helpers import eventually
from tests.loopback_net import Tally, relay
from tests.openai_server import Reply, ScriptedOpenAI
from tests.servers import serve_on_loopback
from tests.test_page import ARTIFACTS, NO_WEBSOCKET, SLOW, _answers, _history, _page, _send, _session_id
from tests.test_page import browser as browser  # the Chromium fixture, shared with test_page.py

TRANSPORTS = ["ws", "sse"]
# What the page's connection status says, in order, and every text the answer showed that was not
# the beginning of the model's text.
RECORDER = """
window.__seen = { states: [], texts: [], broken: [] };
document.addEventListener("DOMContentLoaded", () => {
  const expected = %s;
  const status = document.getElementById("connection");
  const seen = window.__seen;
  const note = () => {
    if (seen.states.at(-1) !== status.dataset.state) seen.states.push(status.dataset.state);
    const text = status.textContent.trim();
    if (seen.texts.at(-1) !== text) seen.texts.push(text);
  };
  const all = { attributes: true, childList: true, subtree: true, characterData: true };
  new MutationObserver(note).observe(status, all);
  const log = document.getElementById("log");
  new MutationObserver(() => {
    for (const block of log.querySelectorAll(".msg.assistant .md")) {
      const shown = block.textContent.replace(/\\s+/g, " ").trim();
      if (!expected.startsWith(shown)) seen.broken.push(shown);
    }
  }).observe(log, all);
});
"""


@contextlib.asynccontextmanager
async def _shop(settings: Settings) -> AsyncIterator[tuple[str, str, Tally]]:
    """The app behind a loopback relay: (the relay's URL, for the browser; the app's URL; the tally)."""
    async with serve_on_loopback(create_app(settings)) as port, relay(port) as (front, tally):
        yield f"http://127.0.0.1:{front}", f"http://127.0.0.1:{port}", tally


class Watched:
    """A page with the recorder, and the resumes it asked for (socket frames and HTTP requests)."""

    def __init__(self, page: Page, errors: list[str]) -> None:
        self.page = page
        self.errors = errors
        self.frames: list[dict[str, Any]] = []
        self.requests: list[Request] = []
        page.on("websocket", self._socket)
        page.on("request", lambda request: self.requests.append(request))

    def _socket(self, ws: WebSocket) -> None:
        ws.on("framesent", lambda payload: self.frames.append(json.loads(payload)))

    async def seen(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = await self.page.evaluate("window.__seen")
        return found

    async def resumed_after(self) -> list[int]:
        """The `seq` each resume asked to continue after, over the socket and over HTTP."""
        after = [f["after"] for f in self.frames if f.get("type") == "resume"]
        for request in self.requests:
            if "/stream" in request.url and request.method == "GET":
                position = (await request.all_headers()).get("last-event-id", "")
                after.append(int(position.rpartition(":")[2]) if position else 0)
        return after


async def _open(browser: Browser, base: str, transport: str) -> Watched:
    page, errors = await _page(browser)
    await page.add_init_script(RECORDER % json.dumps(SLOW))
    if transport == "sse":
        await page.add_init_script(NO_WEBSOCKET)
    watched = Watched(page, errors)
    await page.goto(base)
    await expect(page.locator("#connection")).to_have_attribute("data-state", transport)
    return watched


async def _stored_answer(app_url: str, session: str) -> dict[str, Any]:
    status, body = await _history(app_url, session)
    assert status == 200
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"]
    answer: dict[str, Any] = body["messages"][-1]
    return answer


@pytest.mark.parametrize("drop", ["offline", "cut", "offline+cut"])
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_answer_resumes_after_a_network_drop(
    transport: str, drop: str, browser: Browser, model_settings: Settings, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(Reply.say(SLOW, delay=0.05))  # 80 words in about 4 s
    async with _shop(model_settings) as (base, app_url, tally):
        watched = await _open(browser, base, transport)
        page = watched.page
        status = page.locator("#connection")
        answer = _answers(page).last
        await _send(page, "tell me a long story")
        await expect(answer.locator(".md")).to_contain_text("word2")  # mid-answer

        if "offline" in drop:
            await page.context.set_offline(True)
            await expect(status).to_have_attribute("data-state", re.compile("offline|reconnecting"))
        if "cut" in drop:
            tally.drop_all()
        if drop == "offline+cut" and transport == "sse":
            # the fetch fails at once: the page says it is reconnecting, and the answer waits
            await expect(status).to_have_attribute("data-state", "reconnecting")
            await expect(answer).to_have_attribute("data-link", "lost")
            await expect(answer.locator(".link-note")).to_have_text("Connection lost — reconnecting…")
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=ARTIFACTS / "resume-reconnecting.png", animations="disabled")
        if "offline" in drop:
            await page.context.set_offline(False)

        await expect(answer).to_have_attribute("data-state", "done", timeout=20_000)
        await expect(answer.locator(".md")).to_have_text(SLOW)
        await expect(_answers(page)).to_have_count(1)
        await expect(answer.locator(".link-note")).to_have_count(0)
        seen = await watched.seen()
        assert seen["broken"] == [], "the answer showed a repeated or missing piece"
        assert "reconnected" in seen["states"] and "Reconnected" in seen["texts"], seen
        after = await watched.resumed_after()
        assert after and min(after) >= 3, after  # picked up after what it had shown, not from the start
        if drop == "offline+cut":
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=ARTIFACTS / f"resume-done-{transport}.png", animations="disabled")

        stored = await _stored_answer(app_url, await _session_id(page))
        assert stored["content"] == SLOW and not stored.get("interrupted")
        await page.reload()  # what the history shows is what the customer saw
        await expect(_answers(page).last.locator(".md")).to_have_text(SLOW)
        await page.context.close()
        assert watched.errors == []


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_answer_no_longer_kept_comes_from_the_history(
    transport: str, browser: Browser, make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI
) -> None:
    """Offline for longer than the service keeps answers: the resume is a 404, the page reads the history."""
    openai_server.push(Reply.say(SLOW, delay=0.02))
    async with _shop(make_model_settings(resume_buffer_seconds=1)) as (base, app_url, tally):
        watched = await _open(browser, base, transport)
        page = watched.page
        answer = _answers(page).last
        await _send(page, "tell me a long story")
        await expect(answer.locator(".md")).to_contain_text("word2")
        await page.context.set_offline(True)
        tally.drop_all()
        session = await _session_id(page)

        async def forgotten() -> bool:
            stored = await _stored_answer(app_url, session)
            async with httpx.AsyncClient(base_url=app_url) as http:
                gone = await http.get(f"/api/v1/sessions/{session}/stream", params={"tenant_id": "default"})
            return stored["content"] == SLOW and gone.status_code == 404

        await eventually(forgotten, within=20, interval=0.1, what="the answer stored, then forgotten")
        await page.context.set_offline(False)

        await expect(page.locator("#connection")).not_to_have_attribute("data-state", "reconnecting")
        await expect(_answers(page).last.locator(".md")).to_have_text(SLOW)
        await expect(_answers(page).last).to_have_attribute("data-state", "done")
        await expect(_answers(page)).to_have_count(1)
        await expect(page.locator("#log .msg.user .plain")).to_have_text("tell me a long story")
        await expect(page.locator("#banner-resend")).to_have_count(0)  # the message did arrive
        seen = await watched.seen()
        assert seen["broken"] == []
        assert "reconnected" in seen["states"], seen
        assert await watched.resumed_after(), "the page did ask for the answer again"
        await page.context.close()
        assert watched.errors == []


LONG = " ".join(f"word{i}" for i in range(400))  # about 20 s: it is stopped long before its end


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stop_after_a_resume_stops_the_answer(
    transport: str, browser: Browser, model_settings: Settings, openai_server: ScriptedOpenAI
) -> None:
    """A resumed answer is stopped through the stop endpoint (a socket's `stop` frame only stops
    the answer that socket started)."""
    openai_server.push(Reply.say(LONG, delay=0.05))
    async with _shop(model_settings) as (base, app_url, tally):
        watched = await _open(browser, base, transport)
        page = watched.page
        answer = _answers(page).last
        await _send(page, "tell me a very long story")
        await expect(answer.locator(".md")).to_contain_text("word2")
        tally.drop_all()
        await page.wait_for_function("() => window.__seen.states.includes('reconnected')")
        shown = await answer.locator(".md").text_content() or ""
        following = f"word{len(shown.split()) + 2} "  # the resumed answer streams on
        await expect(answer.locator(".md")).to_contain_text(following)
        await page.get_by_role("button", name="Stop the answer").click()
        await expect(answer).to_have_attribute("data-state", "interrupted")
        await expect(page.locator("#send")).to_be_visible()
        if transport == "ws":
            assert [f["type"] for f in watched.frames if f["type"] != "ping"] == ["chat", "resume"]
        shown = (await answer.locator(".md").text_content() or "").strip()
        stored = await _stored_answer(app_url, await _session_id(page))
        assert stored["interrupted"] is True and stored["content"].startswith(shown)
        assert "word399" not in stored["content"]
        seen = await watched.seen()
        assert seen["broken"] == []
        await page.context.close()
        assert watched.errors == []


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_cut_before_the_first_token_resumes_from_the_start(
    transport: str, browser: Browser, model_settings: Settings, openai_server: ScriptedOpenAI
) -> None:
    """No event yet, so no position: the page asks for the session's running answer from its start."""
    openai_server.push(Reply.say(SLOW, delay=0.02, hang=1.0))
    async with _shop(model_settings) as (base, app_url, tally):
        watched = await _open(browser, base, transport)
        page = watched.page
        answer = _answers(page).last
        await _send(page, "tell me a long story")
        session = await _session_id(page)

        async def running() -> bool:  # the service has the turn (the model has not answered yet)
            path = f"/api/v1/sessions/{session}/stream"
            async with (
                httpx.AsyncClient(base_url=app_url) as http,
                http.stream("GET", path, params={"tenant_id": "default"}) as got,
            ):
                return got.status_code == 200

        await eventually(running, what="the turn under way")
        await expect(answer).to_have_attribute("data-state", "streaming")
        assert await answer.locator(".md").count() == 0  # nothing shown yet
        tally.drop_all()
        await expect(answer).to_have_attribute("data-state", "done", timeout=20_000)
        await expect(answer.locator(".md")).to_have_text(SLOW)
        seen = await watched.seen()
        assert seen["broken"] == [] and "reconnected" in seen["states"], seen
        assert 0 in await watched.resumed_after()  # from the start: the page knew no position
        stored = await _stored_answer(app_url, session)
        assert stored["content"] == SLOW
        await page.context.close()
        assert watched.errors == []


async def test_a_message_that_never_left_goes_back_to_the_message_box(
    browser: Browser, model_settings: Settings
) -> None:
    """Sent while offline over HTTP: nothing began on the service. The page does not take the
    session's previous answer for this one; it shows the history and gives the message back."""
    async with _shop(model_settings) as (base, app_url, _):
        watched = await _open(browser, base, "sse")
        page = watched.page
        await _send(page, "first question")
        await expect(_answers(page).last.locator(".md")).to_have_text("Echo: first question")
        await page.context.set_offline(True)
        await _send(page, "second question")
        await expect(page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
        await page.context.set_offline(False)
        await expect(page.locator("#banner-resend")).to_contain_text("did not reach the service")
        await expect(page.get_by_label("Message", exact=True)).to_have_value("second question")
        await expect(page.locator("#log .msg.user .plain")).to_have_text(["first question"])
        await expect(_answers(page)).to_have_count(1)
        await expect(page.locator("#send")).to_be_visible()
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=ARTIFACTS / "resume-not-sent.png", animations="disabled")
        _, history = await _history(app_url, await _session_id(page))
        assert [m["content"] for m in history["messages"]] == ["first question", "Echo: first question"]
        # sent again, it is answered as usual and the notice goes
        await page.get_by_label("Message", exact=True).press("Enter")
        await expect(_answers(page).last.locator(".md")).to_have_text("Echo: second question")
        await expect(page.locator("#banner-resend")).to_have_count(0)
        await page.context.close()
        assert watched.errors == []
