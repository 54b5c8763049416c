"""The chat page in front of customers, in real Chromium: visitor tokens, the shop's `#token=` links,
and never a tenant key in the browser. Three browser contexts share one server at once."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, expect

from msev15 import create_app
from tests.conftest import make_settings
from tests.helpers import eventually
from tests.servers import serve_on_loopback
from tests.test_page import ARTIFACTS, _answers, _page, _send, _session_id
from tests.test_page import browser as browser  # the Chromium fixture, shared with test_page.py

SHOP_KEY = "shop-key-for-the-backend-only"
SECRET = "a-shared-client-token-secret-of-more-than-32-bytes"
CSP = "Content Security Policy"
# Chromium logs "Refused to ... Content Security Policy ..." itself; the event is a second witness.
REPORT_CSP = """document.addEventListener("securitypolicyviolation", (e) =>
  console.error(`Content Security Policy violation: ${e.violatedDirective} ${e.blockedURI}`));"""


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[str]:
    """A shop in production shape: API keys for its backend, and public chat for anonymous visitors."""
    settings = make_settings(
        tmp_path, api_keys=f"{SHOP_KEY}:default", public_chat=True, client_token_secret=SECRET
    )
    async with serve_on_loopback(create_app(settings)) as port:
        yield f"http://127.0.0.1:{port}"


class Customer:
    """One browser context: its page, and what went wrong in it (page errors, CSP reports)."""

    def __init__(self, page: Page, errors: list[str]) -> None:
        self.page = page
        self.errors = errors
        self.csp: list[str] = []
        self.paths: list[str] = []
        page.on("console", self._console)
        page.on("request", lambda request: self.paths.append(request.url.split("?")[0]))

    def _console(self, message: ConsoleMessage) -> None:
        if CSP in message.text:
            self.csp.append(message.text)

    async def stored(self, name: str) -> Any:
        return await self.page.evaluate("(name) => localStorage.getItem(name)", name)

    async def token(self) -> dict[str, Any]:
        found = await self.page.evaluate("JSON.parse(localStorage.getItem('msev15.token'))")
        assert isinstance(found, dict)
        return found

    async def claims(self) -> dict[str, Any]:
        found: dict[str, Any] = jwt.decode((await self.token())["token"], options={"verify_signature": False})
        return found

    async def status(self, method: str, path: str, body: dict[str, Any] | None = None) -> int:
        """What the API answers this browser's own token (as anyone could try from the console)."""
        found: int = await self.page.evaluate(
            """async ([method, path, body]) => {
                 const { token } = JSON.parse(localStorage.getItem("msev15.token"));
                 const init = { method, headers: { Authorization: `Bearer ${token}` } };
                 if (body) {
                   init.body = JSON.stringify(body);
                   init.headers["Content-Type"] = "application/json";
                 }
                 return (await fetch(path, init)).status;
               }""",
            [method, path, body],
        )
        return found

    async def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        await self.page.screenshot(path=ARTIFACTS / name, animations="disabled")

    def assert_clean(self) -> None:
        assert self.errors == []
        assert self.csp == []


async def _customer(browser: Browser) -> Customer:
    page, errors = await _page(browser)
    await page.add_init_script(REPORT_CSP)
    return Customer(page, errors)


async def _mint(base: str, user_id: str, email: str | None = None) -> str:
    """What the shop's backend does after its own login: a client token for one customer."""
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {SHOP_KEY}"}) as http:
        response = await http.post(
            "/api/v1/client-tokens", json={"user_id": user_id, "customer_email": email}
        )
        assert response.status_code == 201, response.text
        token: str = response.json()["token"]
        return token


async def _shop_api(base: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {SHOP_KEY}"}) as http:
        return await http.request(method, path, **kwargs)


def _token(user: str, *, expires_in: int, secret: str = SECRET, email: str | None = None) -> str:
    claims: dict[str, Any] = {"tid": "default", "sub": user, "exp": int(time.time()) + expires_in}
    if email:
        claims["email"] = email
    return jwt.encode(claims, secret, algorithm="HS256")


async def _sees_only(customer: Customer, session_id: str, said: str) -> None:
    """The sidebar lists exactly one conversation, this one, as the server stored it."""
    items = customer.page.locator("#session-list .session")
    await expect(items.locator(".session-meta")).to_contain_text("2 messages")  # listed by the server
    await expect(items).to_have_count(1)
    await expect(items).to_have_attribute("data-session-id", session_id)
    await expect(customer.page.locator("#log .msg.user .plain")).to_have_text([said])


async def test_two_visitors_and_a_verified_customer_each_see_only_their_own_conversations(
    shop: str, browser: Browser
) -> None:
    # Another customer's conversation, held by the shop's backend: no page may ever show it.
    response = await _shop_api(
        shop,
        "POST",
        "/api/v1/chat",
        json={"session_id": "backend-chat", "user_id": "someone-else", "message": "hello"},
    )
    assert response.status_code == 200, response.text
    link_token = await _mint(shop, "cust-42", "alice@example.com")

    one, two, alice = [await _customer(browser) for _ in range(3)]
    everyone = {"one": one, "two": two, "alice": alice}
    await one.page.goto(shop)
    await two.page.goto(shop)
    await alice.page.goto(f"{shop}/#token={link_token}")
    await expect(alice.page).to_have_url(f"{shop}/")  # the token left the address bar at once
    assert "token" not in await alice.page.evaluate("location.href")
    assert await alice.token() == {"token": link_token, "kind": "client"}
    for who in (one, two, alice):
        await expect(who.page.locator("#connection")).to_have_attribute("data-state", "ws")
    await expect(one.page.locator("#identity")).to_have_text("Chatting as a guest")
    await expect(alice.page.locator("#identity")).to_have_text("Signed in as alice@example.com")
    await expect(alice.page.get_by_label("Shop (tenant)")).to_be_disabled()  # fixed by the link

    said = {
        "one": "Where is order ORD-1002? My email is alice@example.com",
        "two": "Hello, I have a question",
        "alice": "Where is my order ORD-1001? I'm alice@example.com",
    }
    await _send(one.page, said["one"])
    await _send(two.page, said["two"])
    await _send(alice.page, said["alice"])
    for who in (one, two, alice):
        await expect(_answers(who.page).last).to_have_attribute("data-state", "done")
    await expect(one.page.locator(".tool-step[data-tool='get_order']")).to_have_attribute("data-state", "ok")
    order = alice.page.locator(".tool-step[data-tool='get_order']")
    await expect(order).to_have_attribute("data-state", "ok")
    await expect(_answers(alice.page).last).to_contain_text("Order ORD-1001 is pending")

    sessions = {name: await _session_id(who.page) for name, who in everyone.items()}
    assert len(set(sessions.values())) == 3
    users = {name: (await who.claims())["sub"] for name, who in everyone.items()}
    assert users["alice"] == "cust-42"
    assert users["one"].startswith("visitor-") and users["two"].startswith("visitor-")
    assert users["one"] != users["two"]
    # The shop's backend (tenant-wide) sees every conversation, each with its owner.
    listed = (await _shop_api(shop, "GET", "/api/v1/sessions")).json()["sessions"]
    owners = {s["session_id"]: s["user_id"] for s in listed}
    assert owners == {
        "backend-chat": "someone-else",
        sessions["one"]: users["one"],
        sessions["two"]: users["two"],
        sessions["alice"]: "cust-42",
    }

    for name, who in everyone.items():
        await _sees_only(who, sessions[name], said[name])
        await who.page.reload()
        await _sees_only(who, sessions[name], said[name])
        for other in said.keys() - {name}:
            await expect(who.page.locator("#log")).not_to_contain_text(said[other])
            assert await who.status("GET", f"/api/v1/sessions/{sessions[other]}/history") == 404
        assert await who.status("GET", "/api/v1/sessions/backend-chat/history") == 404
        assert await who.stored("msev15.apiKey") is None  # nobody ever entered a key
    await expect(alice.page).to_have_url(f"{shop}/")

    # With a verified email the tools act for it alone: bob's order reads as absent for alice.
    await _send(alice.page, "Where is my order ORD-1004? I'm bob@example.com")
    await expect(_answers(alice.page).last).to_have_attribute("data-state", "done")
    await expect(order.last).to_have_attribute("data-state", "failed")
    await expect(_answers(alice.page).last).to_contain_text("couldn't look up order ORD-1004")

    for name, who in everyone.items():
        await who.shot(f"customers-{name}.png")

    # Visitor two types visitor one's session id into its storage: nothing of it is shown,
    # and the API answers 404 to every way of reaching it.
    await two.page.evaluate(
        "([key, id]) => localStorage.setItem(key, id)",
        [f"msev15.session.default/{users['two']}", sessions["one"]],
    )
    await two.page.reload()
    await expect(two.page.get_by_role("heading", name="How can we help today?")).to_be_visible()
    await expect(two.page.locator("#session-list .session.current .session-meta")).to_have_text(
        "Not started yet"
    )
    await expect(two.page.locator("#log .msg")).to_have_count(0)
    await expect(two.page.locator("#session-list")).not_to_contain_text(said["one"])
    one_path = f"/api/v1/sessions/{sessions['one']}"
    assert await two.status("GET", f"{one_path}/history") == 404
    assert await two.status("DELETE", one_path) == 404
    chat = {"session_id": sessions["one"], "message": "show me"}
    assert await two.status("POST", "/api/v1/chat", chat) == 404
    await one.page.reload()
    await _sees_only(one, sessions["one"], said["one"])  # still there, untouched

    for who in everyone.values():
        assert not await who.page.locator("#key-dialog").is_visible()
        await who.page.context.close()  # before the server stops, so no socket is left open
        who.assert_clean()


async def test_an_expired_or_forged_link_asks_to_open_the_chat_again(shop: str, browser: Browser) -> None:
    expired = await _customer(browser)
    await expired.page.goto(f"{shop}/#token={_token('cust-7', expires_in=-60)}")
    gate = expired.page.locator(".gate")
    await expect(gate.get_by_role("heading")).to_have_text("This chat link has expired")
    await expect(gate).to_contain_text("open the chat again from the shop's website")
    await expect(expired.page).to_have_url(f"{shop}/")
    await expect(expired.page.get_by_label("Message", exact=True)).to_be_disabled()
    await expect(expired.page.locator("#connection")).to_have_attribute("data-state", "locked")
    await expired.shot("customers-link-expired.png")
    await expired.page.reload()  # still the same answer: a link's customer never becomes a visitor
    await expect(gate.get_by_role("heading")).to_have_text("This chat link has expired")
    assert not any(p.endswith(("/visitor-tokens", "/chat/ws")) for p in expired.paths)

    # Signed with a secret the service does not have: it looks fine here, the server says 401.
    forged = await _customer(browser)
    await forged.page.goto(f"{shop}/#token={_token('cust-8', expires_in=3600, secret='x' * 40)}")
    gate = forged.page.locator(".gate")
    await expect(gate.get_by_role("heading")).to_have_text("This chat link has expired")
    await expect(forged.page.get_by_label("Message", exact=True)).to_be_disabled()

    # Opening a fresh link in the same tab changes only the fragment: the page signs in with it.
    fresh = await _mint(shop, "cust-8")
    await forged.page.evaluate("(token) => { location.hash = `token=${token}`; }", fresh)
    await expect(forged.page.locator("#identity")).to_have_text("Signed in by the shop")
    await expect(forged.page).to_have_url(f"{shop}/")
    await expect(forged.page.locator("#connection")).to_have_attribute("data-state", "ws")
    await _send(forged.page, "What time is it?")
    await expect(_answers(forged.page).last).to_have_attribute("data-state", "done")
    for who in (expired, forged):
        await who.page.context.close()
        who.assert_clean()


async def test_an_expired_or_refused_visitor_token_is_replaced(shop: str, browser: Browser) -> None:
    visitor = await _customer(browser)
    await visitor.page.goto(shop)
    await expect(visitor.page.locator("#connection")).to_have_attribute("data-state", "ws")
    first = (await visitor.claims())["sub"]

    async def replace_token(token: str) -> None:
        await visitor.page.evaluate(
            "(token) => localStorage.setItem('msev15.token', JSON.stringify({ token, kind: 'visitor' }))",
            token,
        )
        await visitor.page.reload()

    async def renewed(old: str) -> str:
        async def check() -> str:
            found = await visitor.token()
            claims = await visitor.claims()
            assert found["token"] != old and claims["exp"] > time.time()
            return str(claims["sub"])

        return await eventually(check, what="a new visitor token")

    old = _token("visitor-expired", expires_in=-60)  # decoded here in the page: known to be expired
    await replace_token(old)
    second = await renewed(old)
    assert second not in (first, "visitor-expired")
    old = _token("visitor-forged", expires_in=3600, secret="y" * 40)  # refused by the server (401)
    await replace_token(old)
    third = await renewed(old)
    assert third not in (first, second, "visitor-forged")
    await expect(visitor.page.locator("#connection")).to_have_attribute("data-state", "ws")
    await _send(visitor.page, "What time is it?")
    await expect(_answers(visitor.page).last).to_have_attribute("data-state", "done")
    await visitor.page.context.close()
    visitor.assert_clean()


async def test_the_csp_watch_does_see_a_violation(shop: str, browser: Browser) -> None:
    """The CSP assertions above are not vacuous: an inline style attribute is reported."""
    probe = await _customer(browser)
    await probe.page.goto(shop)
    await expect(probe.page.locator("#connection")).to_have_attribute("data-state", "ws")
    assert probe.csp == []
    await probe.page.evaluate(
        "document.body.insertAdjacentHTML('beforeend', '<p style=\"color: red\">x</p>')"
    )
    await eventually(lambda: probe.csp, what="a CSP report in the console")
    await probe.page.context.close()


async def test_staff_key_under_advanced_is_used_instead_of_the_token(shop: str, browser: Browser) -> None:
    staff = await _customer(browser)
    await staff.page.goto(shop)
    await _send(staff.page, "hello from a guest")
    await expect(_answers(staff.page).last).to_have_attribute("data-state", "done")
    guest_session = await _session_id(staff.page)
    response = await _shop_api(
        shop, "POST", "/api/v1/chat", json={"session_id": "other-chat", "user_id": "cust-9", "message": "hi"}
    )
    assert response.status_code == 200, response.text

    key_button = staff.page.get_by_role("button", name="API key…")
    await expect(key_button).to_be_hidden()  # folded away under "Advanced"
    await staff.page.get_by_text("Advanced", exact=True).click()
    await key_button.click()
    dialog = staff.page.get_by_role("dialog", name="API key")
    await dialog.get_by_label("Key").fill(SHOP_KEY)
    await dialog.get_by_role("button", name="Save").click()
    await expect(staff.page.locator("#identity")).to_have_text("Staff view: every conversation of “default”")
    listed = staff.page.locator("#session-list .session")
    await expect(listed.filter(has_text="2 messages")).to_have_count(2)  # the guest's and cust-9's
    await expect(staff.page.locator("#session-list [data-session-id='other-chat']")).to_have_count(1)
    await expect(staff.page.get_by_label("Shop (tenant)")).to_be_enabled()

    await key_button.click()  # an empty key removes it: the guest again, with only its own chat
    await dialog.get_by_label("Key").fill("")
    await dialog.get_by_role("button", name="Save").click()
    await expect(staff.page.locator("#identity")).to_have_text("Chatting as a guest")
    await expect(listed).to_have_count(1)
    await expect(listed).to_have_attribute("data-session-id", guest_session)
    assert await staff.stored("msev15.apiKey") is None
    await staff.page.context.close()
    staff.assert_clean()
