"""Prometheus metrics the service exports on /metrics: the names `infra/` alerts and dashboards use.

Each app instance gets its own registry (tests run several apps in one process).
`METRIC_NAMES` is the contract: an alert or dashboard query naming a `clawbot_*`
series that is not produced here is a failing test in tests/infra.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
TPOT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64)


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    request_duration: Histogram
    time_to_first_token: Histogram
    time_per_output_token: Histogram
    prompt_tokens: Counter
    prompt_tokens_cached: Counter
    generated_tokens: Counter
    queue_depth: Gauge
    inflight: Gauge
    batch_size: Histogram
    model_memory_bytes: Gauge
    model_ready: Gauge
    key_requests: Counter
    abnormal_keys: Counter
    rate_limited: Counter
    cache_lookups: Counter
    redis_errors: Counter
    generation_timeouts: Counter
    auth_failures: Counter
    engine_failures: Counter
    request_failures: Counter
    engine_oom: Counter
    kv_budget_tokens: Gauge


def build_metrics() -> Metrics:
    r = CollectorRegistry()
    return Metrics(
        registry=r,
        requests=Counter("clawbot_requests", "HTTP requests by route and status", ["route", "status"], registry=r),
        request_duration=Histogram(
            "clawbot_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        ),
        time_to_first_token=Histogram(
            "clawbot_time_to_first_token_seconds",
            "Time from request admission to first generated token",
            buckets=TTFT_BUCKETS,
            registry=r,
        ),
        time_per_output_token=Histogram(
            "clawbot_time_per_output_token_seconds",
            "Mean time between output tokens after the first, one observation per finished generation",
            buckets=TPOT_BUCKETS,
            registry=r,
        ),
        prompt_tokens=Counter("clawbot_prompt_tokens", "Prompt tokens processed", registry=r),
        prompt_tokens_cached=Counter(
            "clawbot_prompt_tokens_cached", "Prompt tokens whose KV came from the prefix cache", registry=r
        ),
        generated_tokens=Counter("clawbot_generated_tokens", "Tokens generated", registry=r),
        queue_depth=Gauge("clawbot_queue_depth", "Requests waiting for a batch slot", registry=r),
        inflight=Gauge("clawbot_inflight_requests", "Requests being served (queued or generating)", registry=r),
        batch_size=Histogram("clawbot_batch_size", "Rows in each decode step", buckets=BATCH_BUCKETS, registry=r),
        model_memory_bytes=Gauge(
            "clawbot_model_memory_bytes", "Bytes held by the loaded model's parameters and buffers", registry=r
        ),
        model_ready=Gauge("clawbot_model_ready", "1 once the model is loaded and warmed up", registry=r),
        key_requests=Counter("clawbot_key_requests", "Authenticated requests per API key id", ["key_id"], registry=r),
        abnormal_keys=Counter(
            "clawbot_abnormal_key_usage",
            "Times a key exceeded the abnormal-usage rate (1000/min)",
            ["key_id"],
            registry=r,
        ),
        rate_limited=Counter("clawbot_rate_limited", "Requests refused by a rate limit", ["scope"], registry=r),
        cache_lookups=Counter("clawbot_cache_lookups", "Response cache lookups", ["result"], registry=r),
        redis_errors=Counter(
            "clawbot_redis_errors", "Redis operations that failed and fell back to local state", registry=r
        ),
        generation_timeouts=Counter("clawbot_generation_timeouts", "Generations stopped by the timeout", registry=r),
        auth_failures=Counter("clawbot_auth_failures", "Rejected credentials by reason", ["reason"], registry=r),
        engine_failures=Counter(
            "clawbot_engine_failures",
            "Times the generation engine's worker died, by exception type",
            ["reason"],
            registry=r,
        ),
        request_failures=Counter(
            "clawbot_request_failures",
            "Requests whose own step failed (sampling, grammar, detokenization) while the engine went on, by stage",
            ["stage"],
            registry=r,
        ),
        engine_oom=Counter(
            "clawbot_engine_oom",
            "Out-of-memory errors the engine recovered from by splitting the batch",
            ["phase"],
            registry=r,
        ),
        kv_budget_tokens=Gauge(
            "clawbot_kv_budget_tokens",
            "KV-cache tokens the engine admits requests against (lowered after out-of-memory)",
            registry=r,
        ),
    )


def exported_names(metrics: Metrics) -> set[str]:
    """Every series name a scrape can contain (counters get _total, histograms _bucket/_sum/_count)."""
    names: set[str] = set()
    for family in metrics.registry.collect():
        for sample in family.samples:
            names.add(sample.name)
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update({family.name + s for s in ("_bucket", "_sum", "_count")})
    return names


METRIC_NAMES: frozenset[str] = frozenset(exported_names(build_metrics()))


def route_of(scope: Mapping[str, Any]) -> str:
    """The `route` label of a request: its route template, never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    # Unmatched paths share one label so a scanner cannot blow up metric cardinality.
    return path if isinstance(path, str) else "unmatched"
