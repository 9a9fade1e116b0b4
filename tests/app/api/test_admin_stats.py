"""GET /admin/stats: figures read from the metrics registry, percentiles estimated from histogram buckets."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import app.factory as main
from app.api.auth import route_caller
from app.api.errors import install_error_handlers
from app.api.routes import admin_stats
from app.api.routes.admin_stats import collect_stats, histogram_quantile
from app.observability.metrics import LATENCY_BUCKETS, Metrics, build_metrics
from app.settings import load_settings

INF = math.inf
DEV_KEY = "ck-dev-" + "fedcba9876543210" * 3


def test_quantiles_interpolate_inside_the_bucket_holding_the_rank() -> None:
    buckets = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (INF, 40.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.3)  # rank 20: half-way through (0.1, 0.5]
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.9)  # rank 38: 8 of 10 into (0.5, 1]
    assert histogram_quantile(0.05, buckets) == pytest.approx(0.02)  # first bucket starts at 0
    assert histogram_quantile(0.5, [(1.0, 0.0), (2.0, 0.0), (5.0, 4.0), (INF, 4.0)]) == pytest.approx(
        3.5
    )  # empty buckets skipped


def test_quantile_edges() -> None:
    assert histogram_quantile(0.99, [(1.0, 1.0), (2.0, 1.0), (INF, 5.0)]) == 2.0  # in +Inf: highest finite bound
    assert histogram_quantile(0.5, [(1.0, 0.0), (INF, 0.0)]) is None
    with pytest.raises(ValueError, match="quantile must be between 0 and 1, got 1.5"):
        histogram_quantile(1.5, [(INF, 1.0)])
    with pytest.raises(ValueError, match=r"\+Inf"):
        histogram_quantile(0.5, [(1.0, 1.0)])


def _observe(metrics: Metrics) -> None:
    for _ in range(50):  # fast probes must not drag the chat latency down
        metrics.requests.labels(route="/healthz", status="200").inc()
        metrics.request_duration.labels(route="/healthz").observe(0.001)
    for seconds in (0.3, 0.4, 0.7, 0.8, 3.0, 4.0, 7.0, 8.0):
        metrics.requests.labels(route="/v1/chat/completions", status="200").inc()
        metrics.request_duration.labels(route="/v1/chat/completions").observe(seconds)
    metrics.requests.labels(route="/api/chat", status="200").inc()
    metrics.request_duration.labels(route="/api/chat").observe(1.5)
    metrics.requests.labels(route="/api/chat", status="429").inc()
    metrics.requests.labels(route="/api/auth", status="401").inc()
    metrics.requests.labels(route="/v1/chat/completions", status="503").inc()
    metrics.rate_limited.labels(scope="key").inc()
    metrics.queue_depth.set(3)
    metrics.inflight.set(5)
    for rows in (2, 4, 6):
        metrics.batch_size.observe(rows)
    metrics.cache_lookups.labels(result="hit").inc(1)
    metrics.cache_lookups.labels(result="miss").inc(3)
    metrics.generated_tokens.inc(120)
    metrics.prompt_tokens.inc(45)
    metrics.time_to_first_token.observe(0.2)


def test_figures_come_from_the_registry() -> None:
    metrics = build_metrics()
    _observe(metrics)
    stats = collect_stats(metrics, model="clawbot", ready=True, started_at=1000.0, now=1090.5)
    assert stats.requests.model_dump() == {
        "total": 50 + 8 + 4,
        "chat": 8 + 3,
        "errors": 3,
        "client_errors": 2,
        "server_errors": 1,
        "rate_limited": 1,
    }
    lat = stats.latency_seconds
    assert lat.count == 9  # chat routes only: 8 + 1 observed durations
    # Chat durations: 0.3 0.4 0.7 0.8 1.5 3 4 7 8 -> the median falls in the (1, 2] bucket, p99 in (5, 10].
    assert lat.p50 is not None and 1.0 < lat.p50 <= 2.0
    assert lat.p95 is not None and lat.p99 is not None and 5.0 < lat.p95 <= lat.p99 <= 10.0
    assert stats.time_to_first_token_seconds.count == 1
    assert (stats.queue_depth, stats.inflight) == (3, 5)
    assert stats.mean_batch_size == pytest.approx(4.0)
    assert stats.cache_hit_rate == pytest.approx(0.25)
    assert (stats.tokens.generated, stats.tokens.prompt) == (120, 45)
    assert stats.uptime_seconds == pytest.approx(90.5)


def test_a_fresh_replica_reports_unknowns_as_null_not_zero() -> None:
    stats = collect_stats(build_metrics(), model="m", ready=False, started_at=5.0, now=5.0)
    assert stats.latency_seconds.p50 is None and stats.latency_seconds.count == 0
    assert stats.mean_batch_size is None and stats.cache_hit_rate is None
    assert stats.requests.total == 0 and stats.ready is False


def _with_admin_principal_overridden(app: FastAPI) -> None:
    # Every route's caller comes from route_caller: override it, so this test is about the figures, not auth.
    app.dependency_overrides[route_caller] = lambda: object()


def test_route_serves_the_live_figures_as_json() -> None:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(admin_stats.router)
    _with_admin_principal_overridden(app)
    metrics = build_metrics()
    app.state.metrics, app.state.model_name, app.state.started_at = metrics, "clawbot", 0
    app.state.ready, app.state.draining = True, False
    client = TestClient(app)
    before = client.get("/admin/stats").json()
    metrics.requests.labels(route="/v1/chat/completions", status="200").inc()
    metrics.request_duration.labels(route="/v1/chat/completions").observe(0.7)
    after = client.get("/admin/stats").json()
    assert before["requests"]["chat"] == 0 and after["requests"]["chat"] == 1
    assert before["latency_seconds"]["p50"] is None
    assert LATENCY_BUCKETS[2] < after["latency_seconds"]["p50"] <= LATENCY_BUCKETS[4]  # within (0.25, 1]
    assert after["model"] == "clawbot" and after["ready"] is True and after["uptime_seconds"] > 0


def test_the_service_refuses_stats_without_an_admin_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def never_loads(settings: Any, hub_token: Any) -> Any:
        release.wait(30)
        raise RuntimeError("test: no model")

    monkeypatch.setattr(main, "_load", never_loads)
    settings = load_settings({"APP_ENV": "development", "DEV_API_KEY": DEV_KEY, "DATA_DIR": str(tmp_path)})
    with TestClient(main.create_app(settings)) as c:
        try:
            anonymous = c.get("/admin/stats")
            assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "authentication_error"
            token = c.post("/api/auth", json={"api_key": DEV_KEY}).json()["token"]
            r = c.get("/admin/stats", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
            assert r.json()["ready"] is False  # still loading: the figures say so instead of failing
        finally:
            release.set()
