"""Network rules as middleware: BLOCKED_CIDRS/ALLOWED_CIDRS on every route of the API port (probes exempt, for the
kubelet), BLOCKED_CIDRS and METRICS_ALLOWED_CIDRS on the metrics port, and no redirect towards a forged Host."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from app.api.metrics_app import create_metrics_app
from app.api.middleware.network_rules import PROBE_PATHS
from app.observability.metrics import build_metrics
from app.settings import Settings
from bench.waiting import wait_until
from tests.app.conftest import KeyFiles, metric_value
from tests.e2e.server import free_port


def _every_route(app: FastAPI) -> list[tuple[str, str]]:
    """(method, url) for every route the app serves, path parameters filled in."""
    return [
        (method, str(route.path).replace("{asset}", "app.js"))
        for route in iter_route_contexts(app.routes)
        for method in sorted((route.methods or set()) - {"HEAD"})
    ]


def test_a_blocked_address_is_refused_on_every_route_but_the_probes(
    modelless_app: Callable[..., FastAPI], keyfiles: KeyFiles
) -> None:
    app = modelless_app(blocked_cidrs=("10.66.0.0/16",))
    bearer = {"Authorization": f"Bearer {keyfiles.raw['root']}"}
    with TestClient(app, client=("10.66.0.9", 5000)) as c:
        routes = _every_route(app)
        for method, url in routes:
            r = c.request(
                method, url, headers=bearer, json={"api_key": keyfiles.raw["root"]} if method == "POST" else None
            )
            if url in PROBE_PATHS:
                assert r.status_code != 403, url  # the kubelet probes from the node's address
            else:
                assert r.status_code == 403 and r.json()["error"]["code"] == "address_not_allowed", (
                    method,
                    url,
                    r.text,
                )
        assert c.get("/no/such/route").status_code == 403  # refused before routing: nothing is learnt about paths
    refused = len(routes) - len(PROBE_PATHS) + 1
    assert metric_value(app.state.metrics, "clawbot_auth_failures_total", reason="ip_blocked") == refused


def test_allowed_cidrs_cover_the_console_docs_and_schema(modelless_app: Callable[..., FastAPI]) -> None:
    app = modelless_app(allowed_cidrs=("192.168.1.0/24",))
    with (
        TestClient(app, client=("8.8.8.8", 5000)) as outsider,
        TestClient(app, client=("192.168.1.20", 5000)) as insider,
    ):
        for url in ("/", "/console/app.js", "/docs", "/redoc", "/openapi.json"):
            assert outsider.get(url).status_code == 403, url
            assert insider.get(url).status_code == 200, url
        assert outsider.get("/healthz").status_code == 200


def test_the_metrics_port_has_its_own_allow_list_and_the_shared_block_list(
    make_settings: Callable[..., Settings],
) -> None:
    metrics = build_metrics()
    settings = make_settings(
        allowed_cidrs=("192.168.1.0/24",),  # the API's clients: Prometheus is not among them
        blocked_cidrs=("10.66.0.0/16",),
        trusted_proxies=("10.0.0.0/8",),  # not believed on the metrics port: scrapers connect directly
    )

    def scrape(peer: str, allow: tuple[str, ...] = (), **headers: str) -> int:
        app = create_metrics_app(metrics, settings.with_overrides(metrics_allowed_cidrs=allow))
        return TestClient(app, client=(peer, 5000)).get("/metrics", headers=headers).status_code

    assert scrape("10.42.7.3") == 200  # no METRICS_ALLOWED_CIDRS: the NetworkPolicy decides who reaches the port
    assert scrape("10.66.0.9") == 403  # BLOCKED_CIDRS hold on every listener
    assert scrape("10.42.7.3", allow=("10.42.0.0/16",)) == 200
    assert scrape("10.43.0.1", allow=("10.42.0.0/16",)) == 403
    assert scrape("10.43.0.1", allow=("10.42.0.0/16",), **{"X-Forwarded-For": "10.42.0.1"}) == 403


def test_no_redirect_points_at_a_forged_host(service: TestClient) -> None:
    forged = {"Host": "evil.example"}
    urls = [url for _, url in _every_route(service.app)]  # type: ignore[arg-type]
    for url in [*urls, *(u.rstrip("/") + "/" for u in urls), "/v1/models/", "/docs/"]:
        r = service.get(url, headers=forged, follow_redirects=False)
        assert not 300 <= r.status_code < 400, (url, r.status_code, r.headers.get("location"))
        assert "evil.example" not in r.headers.get("location", ""), url
    metrics_app = TestClient(create_metrics_app(build_metrics(), service.app.state.settings))  # type: ignore[attr-defined]
    r = metrics_app.get("/metrics/", headers=forged, follow_redirects=False)
    assert r.status_code == 404 and "location" not in r.headers


def test_the_metrics_listener_judges_the_tcp_peer_and_no_header(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spoofed headers on the metrics port: the listener `python -m app` serves, for real, on loopback."""
    from app.__main__ import metrics_listener_config
    from app.factory import create_app

    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")  # uvicorn's own trust list: it must not matter on this port

    def scrape(headers: dict[str, str], **rules: Any) -> int:
        settings = make_settings(metrics_port=free_port(), host="127.0.0.1", **rules)
        config = metrics_listener_config(settings, create_app(settings))
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            wait_until(
                "the metrics listener to start",
                lambda: server.started,
                30,
                poll_s=0.02,
                give_up=lambda: None if thread.is_alive() else "its thread ended",
            )
            return httpx.get(
                f"http://127.0.0.1:{settings.metrics_port}/metrics", headers=headers, timeout=10
            ).status_code
        finally:
            server.should_exit = True
            thread.join(30)

    spoofed = {"X-Forwarded-For": "10.1.2.3", "X-Real-IP": "10.1.2.3", "Forwarded": "for=10.1.2.3"}
    assert scrape({}) == 200
    assert scrape(spoofed, blocked_cidrs=("127.0.0.0/8",)) == 403  # the caller is blocked, whatever it says it is
    # Allowed scrapers in 10/8 and loopback as a "trusted proxy": a forwarded 10.1.2.3 still does not get in.
    assert scrape(spoofed, metrics_allowed_cidrs=("10.0.0.0/8",), trusted_proxies=("127.0.0.0/8",)) == 403
    assert scrape(spoofed, metrics_allowed_cidrs=("127.0.0.0/8",)) == 200
