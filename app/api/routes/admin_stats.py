"""GET /admin/stats: this replica's live figures for the console's admin view, read from its Prometheus metrics.

The figures come from the same registry `/metrics` exports, so the console and the dashboards never
disagree. They are per replica and since process start; fleet-wide figures belong to Prometheus.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator

from fastapi import APIRouter, Request
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.samples import Sample
from pydantic import BaseModel, Field

from app.api.auth import Caller
from app.observability.metrics import Metrics

# Latency percentiles cover the chat routes only: probes, scrapes and the console's own polling answer in
# microseconds and would drown out the figure an operator is asking about.
CHAT_ROUTES: frozenset[str] = frozenset({"/api/chat", "/v1/chat/completions"})
QUANTILES: tuple[float, ...] = (0.5, 0.95, 0.99)

router = APIRouter(prefix="/admin", tags=["admin"], include_in_schema=False)  # see app.api.routes.admin


class RequestCounts(BaseModel):
    total: int = Field(description="HTTP requests on every route, any status")
    chat: int = Field(description="Requests to the chat routes, any status")
    errors: int = Field(description="Responses with a 4xx or 5xx status")
    client_errors: int = Field(description="Responses with a 4xx status")
    server_errors: int = Field(description="Responses with a 5xx status")
    rate_limited: int = Field(description="Requests refused by a rate limit")


class Percentiles(BaseModel):
    p50: float | None = Field(description="Median; null before the first observation")
    p95: float | None
    p99: float | None
    count: int = Field(description="Observations the estimate is based on")


class TokenCounts(BaseModel):
    prompt: int
    generated: int


class AdminStats(BaseModel):
    model: str
    ready: bool
    uptime_seconds: float
    requests: RequestCounts
    latency_seconds: Percentiles = Field(description="Chat request latency, estimated from histogram buckets")
    time_to_first_token_seconds: Percentiles
    queue_depth: int
    inflight: int
    mean_batch_size: float | None = Field(description="Mean rows per decode step; null before the first step")
    cache_hit_rate: float | None = Field(description="Share of cache lookups that hit, 0..1; null before the first")
    tokens: TokenCounts


def _samples(metric: MetricWrapperBase, suffix: str) -> Iterator[Sample]:
    for family in metric.collect():
        for sample in family.samples:
            if sample.name == family.name + suffix:
                yield sample


def _total(metric: MetricWrapperBase, suffix: str = "_total", **labels: str) -> float:
    return sum(s.value for s in _samples(metric, suffix) if all(s.labels.get(k) == v for k, v in labels.items()))


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Estimate quantile `q` from cumulative (upper bound, count) buckets, as PromQL's histogram_quantile does.

    Linear interpolation inside the bucket holding the rank; a rank in the +Inf bucket answers the highest
    finite bound (the histogram cannot say more). None when there are no observations.
    """
    if not 0 <= q <= 1:
        raise ValueError(f"quantile must be between 0 and 1, got {q}")
    ordered = sorted(buckets)
    if not ordered or not math.isinf(ordered[-1][0]):
        raise ValueError("buckets must end with the +Inf bucket")
    total = ordered[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, cumulative in ordered:
        if cumulative >= rank and cumulative > below:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (cumulative - below)
        lower, below = upper, cumulative
    return lower


def _percentiles(metric: MetricWrapperBase, routes: frozenset[str] | None = None) -> Percentiles:
    merged: dict[float, float] = defaultdict(float)
    for s in _samples(metric, "_bucket"):
        if routes is None or s.labels.get("route") in routes:
            merged[float(s.labels["le"])] += s.value
    if not merged:
        return Percentiles(p50=None, p95=None, p99=None, count=0)
    p50, p95, p99 = (histogram_quantile(q, merged.items()) for q in QUANTILES)
    return Percentiles(p50=p50, p95=p95, p99=p99, count=int(merged[math.inf]))


def collect_stats(metrics: Metrics, *, model: str, ready: bool, started_at: float, now: float) -> AdminStats:
    """The admin figures from one metrics registry; pure, so tests can feed it observations directly."""
    by_status = [(s.labels["route"], s.labels["status"], s.value) for s in _samples(metrics.requests, "_total")]
    lookups = _total(metrics.cache_lookups)
    batches = _total(metrics.batch_size, "_count")
    client_errors = int(sum(v for _, status, v in by_status if status.startswith("4")))
    server_errors = int(sum(v for _, status, v in by_status if status.startswith("5")))
    return AdminStats(
        model=model,
        ready=ready,
        uptime_seconds=round(max(0.0, now - started_at), 3),
        requests=RequestCounts(
            total=int(sum(v for _, _, v in by_status)),
            chat=int(sum(v for route, _, v in by_status if route in CHAT_ROUTES)),
            errors=client_errors + server_errors,
            client_errors=client_errors,
            server_errors=server_errors,
            rate_limited=int(_total(metrics.rate_limited)),
        ),
        latency_seconds=_percentiles(metrics.request_duration, CHAT_ROUTES),
        time_to_first_token_seconds=_percentiles(metrics.time_to_first_token),
        queue_depth=int(_total(metrics.queue_depth, "")),
        inflight=int(_total(metrics.inflight, "")),
        mean_batch_size=_total(metrics.batch_size, "_sum") / batches if batches else None,
        cache_hit_rate=_total(metrics.cache_lookups, result="hit") / lookups if lookups else None,
        tokens=TokenCounts(prompt=int(_total(metrics.prompt_tokens)), generated=int(_total(metrics.generated_tokens))),
    )


@router.get("/stats", response_model=AdminStats, summary="This replica's live figures (admin scope)")
async def admin_stats(request: Request, principal: Caller) -> AdminStats:
    state = request.app.state
    return collect_stats(
        state.metrics,
        model=str(state.model_name),
        ready=bool(state.ready and not state.draining),
        started_at=float(state.started_at),
        now=time.time(),
    )
