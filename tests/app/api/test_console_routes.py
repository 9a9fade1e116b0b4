"""The console is served from the service: the page and its two assets, with no inline code or third-party URLs."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.errors import install_error_handlers
from app.api.middleware.security_headers import STRICT_CSP, SecurityHeadersMiddleware
from app.api.routes import console

CONSOLE = Path(console.CONSOLE_DIR)


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(console.router)
    app.add_middleware(SecurityHeadersMiddleware)
    return TestClient(app)


class _Page(HTMLParser):
    """Collects what a CSP cares about: scripts, styles, URLs, inline handlers and element ids."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.urls: list[str] = []
        self.inline: list[str] = []
        self.script_srcs: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(str(a["id"]))
        for name, value in attrs:
            if name == "style" or name.startswith("on"):
                self.inline.append(f"<{tag} {name}=...>")
            if name in ("src", "href", "action", "formaction", "poster") and value is not None:
                self.urls.append(value)
        if tag == "style":
            self.inline.append("<style>")
        if tag == "script":
            self._in_script = True
            if not a.get("src"):
                self.inline.append("<script> without src")
            else:
                self.script_srcs.append(str(a["src"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("inline script body")


def _page(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def test_root_serves_the_sign_in_page_with_the_strict_policy(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["content-security-policy"] == STRICT_CSP
    assert r.headers["x-frame-options"] == "DENY"
    page = _page(r.text)
    assert {"signin-form", "api-key", "chat-view", "admin-view", "stop"} <= page.ids
    assert page.script_srcs == ["/console/app.js"]


def test_assets_are_served_with_their_types_and_nothing_else_is(client: TestClient) -> None:
    js = client.get("/console/app.js")
    css = client.get("/console/style.css")
    assert js.status_code == css.status_code == 200
    assert js.headers["content-type"].startswith("text/javascript")
    assert css.headers["content-type"].startswith("text/css")
    assert js.headers["x-content-type-options"] == "nosniff"  # the browser must not reinterpret them
    assert js.text == (CONSOLE / "app.js").read_text()
    for name in ("index.html", "settings.py", "app.js.bak"):
        r = client.get(f"/console/{name}")
        assert r.status_code == 404, name
        assert "app.js, style.css" in r.json()["error"]["message"]  # the error says what exists
    for path in ("/console/..%2Fmain.py", "/console/%2e%2e/routes/console.py", "/console/../main.py"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path


def test_page_has_no_inline_code_and_no_third_party_urls() -> None:
    page = _page((CONSOLE / "index.html").read_text())
    assert page.inline == []
    for url in page.urls:
        assert url.startswith("/") and not url.startswith("//") or url.startswith("data:"), url
    css = (CONSOLE / "style.css").read_text()
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", css)
    js = (CONSOLE / "app.js").read_text()
    assert not re.search(r"https?://", js)


def test_script_keeps_the_token_out_of_storage_and_html() -> None:
    js = (CONSOLE / "app.js").read_text()
    for banned in (
        "localStorage",
        "sessionStorage",
        "document.cookie",
        "indexedDB",
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "eval(",
        "new Function",
    ):
        assert banned not in js, banned
    assert 'credentials: "omit"' in js  # no ambient cookies ride along either


def test_every_element_the_script_looks_up_exists_in_the_page() -> None:
    ids = _page((CONSOLE / "index.html").read_text()).ids
    wanted = set(re.findall(r"\$\(\"([\w-]+)\"\)", (CONSOLE / "app.js").read_text()))
    assert wanted, "the script looks nothing up?"
    assert wanted <= ids, f"app.js looks up ids missing from index.html: {sorted(wanted - ids)}"
