"""The web console in headless Chromium against a real server: sign-in, streamed chat, errors, admin view."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import ROOT, Server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SCREENSHOTS = ROOT / "build" / "screenshots"
QUESTION = "What is the capital of France?"

# Records every text state of the newest answer, from inside the page, so the test sees streaming as it
# happened rather than sampling it from outside.
WATCH_ANSWERS = """() => {
  window.__answerStates = [];
  new MutationObserver(() => {
    const texts = document.querySelectorAll('#history .turn.assistant .turn-text');
    const last = texts[texts.length - 1];
    if (!last) return;
    const states = window.__answerStates;
    if (states[states.length - 1] !== last.textContent) states.push(last.textContent);
  }).observe(document.getElementById('history'), {childList: true, subtree: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            "the console browser test needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the console browser test needs Playwright for Python (pip install playwright==1.65.2)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


class Console:
    """One fresh tab on the console, recording every request it makes and every error it logs."""

    def __init__(self, browser: Any, server: Server) -> None:
        self.server = server
        self.context = browser.new_context(viewport={"width": 1180, "height": 860})
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda req: self.requests.append(req.url))
        self.page.on("console", lambda msg: self.errors.append(msg.text) if msg.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.response = self.page.goto(server.url + "/")

    def sign_in(self, key: str) -> None:
        self.page.fill("#api-key", key)
        self.page.click("#signin-submit")

    def ask(self, question: str, *, max_tokens: int, temperature: float = 0) -> None:
        self.page.fill("#max-tokens", str(max_tokens))
        self.page.fill("#temperature", str(temperature))
        self.page.fill("#prompt", question)
        self.page.click("#send")

    def last_answer(self) -> Any:
        return self.page.locator("#history .turn.assistant").last

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def console(browser: Any, server: Server) -> Iterator[Console]:
    c = Console(browser, server)
    try:
        yield c
    finally:
        c.close()


def _expected_errors_only(errors: list[str], *allowed: str) -> list[str]:
    # A CSP violation, a script error or a failed asset load would show up here.
    return [e for e in errors if not any(a in e for a in allowed)]


def test_page_is_served_with_strict_csp_and_loads_nothing_third_party(console: Console) -> None:
    headers = console.response.headers
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert headers["x-frame-options"] == "DENY"
    console.page.wait_for_selector("#signin-view:not([hidden])")
    assert console.page.is_hidden("#chat-view") and console.page.is_hidden("#admin-view")
    assert all(url.startswith(console.server.url + "/") for url in console.requests), console.requests
    assert {u.removeprefix(console.server.url) for u in console.requests} >= {
        "/",
        "/console/app.js",
        "/console/style.css",
    }
    assert console.errors == []


def test_bad_key_is_refused_with_a_message(console: Console) -> None:
    console.sign_in("ck-wrong-" + "0" * 48)
    message = console.page.locator("#signin-message")
    message.wait_for(state="visible")
    console.page.wait_for_function(
        "() => !document.getElementById('signin-message').textContent.includes('Signing in')"
    )
    assert "refused" in message.inner_text()
    assert console.page.is_hidden("#chat-view")
    # The browser logs the 401 response itself; nothing else may go wrong.
    assert _expected_errors_only(console.errors, "401") == []


def test_sign_in_and_watch_paris_stream_in(console: Console) -> None:
    page = console.page
    console.sign_in(console.server.api_key)
    page.wait_for_selector("#chat-view:not([hidden])")
    assert "admin" in page.inner_text("#whoami") and page.is_visible("#nav-admin")
    # The token lives in a JS variable only.
    assert page.evaluate("() => localStorage.length + sessionStorage.length") == 0
    assert console.context.cookies() == []

    page.evaluate(WATCH_ANSWERS)
    console.ask(QUESTION, max_tokens=40)
    meta = console.last_answer().locator(".turn-meta")
    page.wait_for_function(
        "() => /completion tokens/.test([...document.querySelectorAll('#history .turn-meta')].pop().textContent)",
        timeout=120_000,
    )
    answer = console.last_answer().locator(".turn-text").inner_text()
    assert "Paris" in answer
    states = [s for s in page.evaluate("() => window.__answerStates") if s]
    assert len(states) >= 2, f"the answer appeared in one piece, not streamed: {states}"
    assert all(b.startswith(a) and len(b) > len(a) for a, b in zip(states, states[1:])), states
    assert states[-1] == page.evaluate(
        "() => [...document.querySelectorAll('#history .turn.assistant .turn-text')].pop().textContent"
    )
    meta_text = meta.inner_text()
    assert re.search(r"\d+ prompt \+ \d+ completion tokens", meta_text), meta_text
    assert re.search(r"\d+(\.\d+)? m?s", meta_text), meta_text  # the answer's latency
    assert page.locator("#history .turn.user").last.inner_text().endswith(QUESTION)
    assert page.locator("#stop").is_disabled() and page.locator("#send").is_enabled()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "console-chat.png"), full_page=True)
    assert all(url.startswith(console.server.url + "/") for url in console.requests), console.requests
    assert console.errors == []


def test_stop_ends_an_answer_early(console: Console) -> None:
    page = console.page
    console.sign_in(console.server.api_key)
    page.wait_for_selector("#chat-view:not([hidden])")
    console.ask("Write a long story about a dragon who learns to bake bread.", max_tokens=256, temperature=0.7)
    page.wait_for_function(
        "() => ([...document.querySelectorAll('#history .turn.assistant .turn-text')].pop() || {}).textContent?.length > 0",
        timeout=120_000,
    )
    page.click("#stop")
    meta = console.last_answer().locator(".turn-meta")
    page.wait_for_function(
        "() => /stopped/.test([...document.querySelectorAll('#history .turn-meta')].pop().textContent)"
    )
    stopped_text = console.last_answer().locator(".turn-text").inner_text()
    assert meta.inner_text().startswith("stopped")
    assert page.locator("#send").is_enabled() and page.locator("#stop").is_disabled()
    page.wait_for_timeout(500)  # a stopped stream must not keep writing into the answer
    assert console.last_answer().locator(".turn-text").inner_text() == stopped_text
    assert console.errors == []


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [(429, "7", "Rate limited: retry in 7 s"), (503, "5", "warming up: retry in 5 s")],
)
def test_busy_answers_say_when_to_retry(console: Console, status: int, retry_after: str, expected: str) -> None:
    page = console.page
    console.sign_in(console.server.api_key)
    page.wait_for_selector("#chat-view:not([hidden])")
    code = "rate_limited" if status == 429 else "model_loading"
    # The real server's 429/503 shapes are asserted in test_api; here the question is what the person sees.
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(
            status=status,
            headers={"Retry-After": retry_after, "Content-Type": "application/json"},
            body=json.dumps({"error": {"type": "x", "message": "busy", "code": code}}),
        ),
    )
    console.ask("Hello?", max_tokens=8)
    message = page.locator("#chat-message")
    message.wait_for(state="visible")
    assert expected in message.inner_text()
    assert page.locator("#send").is_disabled()  # held until Retry-After has passed
    assert page.input_value("#prompt") == "Hello?"  # the question is handed back for the retry


def test_expired_token_returns_to_sign_in_with_a_message(console: Console) -> None:
    page = console.page
    console.sign_in(console.server.api_key)
    page.wait_for_selector("#chat-view:not([hidden])")
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(
            status=401,
            headers={"Content-Type": "application/json"},
            body=json.dumps(
                {"error": {"type": "authentication_error", "message": "token expired", "code": "token_expired"}}
            ),
        ),
    )
    console.ask("Hello?", max_tokens=8)
    page.wait_for_selector("#signin-view:not([hidden])")
    assert "expired" in page.inner_text("#signin-message")
    assert page.is_hidden("#chat-view")


def test_admin_view_shows_live_figures_keys_and_conversations(console: Console) -> None:
    page = console.page
    server = console.server
    console.sign_in(server.api_key)
    page.wait_for_selector("#chat-view:not([hidden])")
    page.click("#nav-admin")
    page.wait_for_selector("#admin-view:not([hidden])")
    page.wait_for_function("() => /^\\d/.test(document.getElementById('stat-chat-requests').textContent)")
    before = int(page.inner_text("#stat-chat-requests").replace(",", ""))

    with httpx.Client(base_url=server.url, timeout=120) as c:
        r = c.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Name one colour."}], "max_tokens": 8},
            headers={"Authorization": f"Bearer {server.api_key}"},
        )
        assert r.status_code == 200, r.text
    # No reload, no click: the view refreshes itself.
    page.wait_for_function(
        f"() => parseInt(document.getElementById('stat-chat-requests').textContent.replace(/,/g, ''), 10) > {before}",
        timeout=20_000,
    )
    assert re.search(r"\d", page.inner_text("#stat-latency"))
    assert re.search(r"\d", page.inner_text("#stat-uptime"))

    key_id = page.inner_text("#whoami").split(" · ")[0]
    key_row = page.locator("#keys-body tr", has_text=key_id).first
    key_row.wait_for()
    assert key_row.locator("td").nth(4).inner_text() != "never"  # signed in and chatted: the key has been used

    page.fill("#conv-key", "no-such-key")
    page.click("#conv-search button")
    page.wait_for_function(
        "() => /No conversations for key no-such-key/.test(document.getElementById('conv-body').textContent)"
    )
    page.fill("#conv-key", key_id)
    page.click("#conv-search button")
    page.wait_for_function("() => !/No conversations/.test(document.getElementById('conv-body').textContent)")
    key_cells = page.locator("#conv-body tr td:nth-child(2)").all_inner_texts()
    assert key_cells and set(key_cells) == {key_id}
    assert "Name one colour." in page.inner_text("#conv-body")  # the request made above is in the store
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "console-admin.png"), full_page=True)
    assert all(url.startswith(server.url + "/") for url in console.requests), console.requests
    assert console.errors == []
