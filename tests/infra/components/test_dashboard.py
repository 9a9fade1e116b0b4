"""The Grafana dashboard: shipped as a sidecar-labelled ConfigMap, with one panel per signal, naming only real metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pulumi
import pytest

from app.observability.metrics import METRIC_NAMES
from infra.components.dashboard import (
    DASHBOARD_PATH,
    Dashboard,
    DashboardArgs,
    DashboardError,
    load_dashboard,
)
from infra.tools.mocks import fresh_event_loop
from tests.infra.promql import metric_names

# Series the dashboard may read that the app does not export, each with where it comes from.
EXTERNAL_METRICS = {"DCGM_FI_DEV_GPU_UTIL": "NVIDIA dcgm-exporter"}


def exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_PATH.read_text())


def unknown_series(dashboard: dict[str, Any]) -> set[str]:
    found = {name for _, expr in exprs(dashboard) for name in metric_names(expr)}
    return {n for n in found if n not in METRIC_NAMES and n not in EXTERNAL_METRICS}


def test_every_series_the_dashboard_reads_exists(dashboard: dict[str, Any]) -> None:
    assert unknown_series(dashboard) == set()
    clawbot = {n for _, e in exprs(dashboard) for n in metric_names(e) if n.startswith("clawbot_")}
    assert clawbot and clawbot <= METRIC_NAMES


def test_a_misspelt_metric_is_caught(dashboard: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(dashboard))
    broken["panels"][0]["targets"][0]["expr"] = 'sum(rate(clawbot_request_total{route="/api/chat"}[5m]))'
    broken["panels"][1]["targets"][0]["expr"] = "avg(DCGM_FI_DEV_MEM_COPY_UTIL)"
    assert unknown_series(broken) == {"clawbot_request_total", "DCGM_FI_DEV_MEM_COPY_UTIL"}


def test_metric_name_extraction_ignores_functions_labels_and_groupings() -> None:
    expr = (
        'clamp_min(1e-9, 2) + histogram_quantile(0.99, sum by (le, route) (rate(clawbot_request_duration_seconds_bucket'
        '{namespace="$namespace", route!~"/(healthz)"}[$__rate_interval]))) / on (pod) group_left up'
    )
    assert metric_names(expr) == {"clawbot_request_duration_seconds_bucket", "up"}


@pytest.mark.parametrize(
    "title_word, series",
    [
        ("Request rate", "clawbot_requests_total"),
        ("Error rate", "clawbot_requests_total"),
        ("Request latency", "clawbot_request_duration_seconds_bucket"),
        ("Time to first token", "clawbot_time_to_first_token_seconds_bucket"),
        ("Time per output token", "clawbot_time_per_output_token_seconds_bucket"),
        ("Tokens per second", "clawbot_generated_tokens_total"),
        ("Queue depth", "clawbot_queue_depth"),
        ("Batch size", "clawbot_batch_size_sum"),
        ("Cache hit rate", "clawbot_cache_lookups_total"),
        ("Rate-limited", "clawbot_rate_limited_total"),
        ("GPU utilization", "DCGM_FI_DEV_GPU_UTIL"),
    ],
)
def test_each_signal_has_its_panel(dashboard: dict[str, Any], title_word: str, series: str) -> None:
    panels = [p for p in dashboard["panels"] if p["title"].startswith(title_word)]
    assert panels, f"no panel titled {title_word!r}"
    assert any(series in metric_names(t["expr"]) for p in panels for t in p["targets"])


@pytest.mark.parametrize("title", ["Request latency", "Time to first token", "Time per output token"])
def test_latency_panels_show_p50_p95_p99(dashboard: dict[str, Any], title: str) -> None:
    panel = next(p for p in dashboard["panels"] if p["title"].startswith(title))
    quantiles = {re.search(r"histogram_quantile\(([0-9.]+)", t["expr"]).group(1) for t in panel["targets"]}  # type: ignore[union-attr]
    assert quantiles == {"0.5", "0.95", "0.99"}


def test_error_rate_counts_server_errors(dashboard: dict[str, Any]) -> None:
    panel = next(p for p in dashboard["panels"] if p["title"] == "Error rate")
    assert any('status=~"5.."' in t["expr"] for t in panel["targets"])


def test_panels_do_not_overlap_and_use_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    cells: set[tuple[int, int]] = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not (cells & mine), f"panel {p['title']!r} overlaps another"
        cells |= mine
        assert p["datasource"]["uid"] == "${datasource}"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


# --- the Dashboard component under Pulumi's mocks ----------------------------------------------------------


class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.created: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.created.append(args)
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


@pytest.fixture
def mocks() -> RecordingMocks:
    m = RecordingMocks()
    fresh_event_loop()
    pulumi.runtime.set_mocks(m, project="clawbot", stack="dev", preview=False)
    return m


@pulumi.runtime.test
def test_config_map_carries_the_sidecar_label_and_the_dashboard(mocks: RecordingMocks) -> pulumi.Output[None]:
    dash = Dashboard("clawbot", DashboardArgs(namespace="monitoring", labels={"app.kubernetes.io/part-of": "clawbot"}))

    def check(args: list[Any]) -> None:
        (name,) = args
        assert name == "clawbot-grafana-dashboard"
        config_maps = [r for r in mocks.created if r.typ == "kubernetes:core/v1:ConfigMap"]
        assert len(config_maps) == 1
        inputs = config_maps[0].inputs
        assert inputs["metadata"]["namespace"] == "monitoring"
        assert inputs["metadata"]["labels"] == {"grafana_dashboard": "1", "app.kubernetes.io/part-of": "clawbot"}
        assert inputs["metadata"]["annotations"] == {"grafana_folder": "ClawBot"}
        assert json.loads(inputs["data"]["clawbot.json"]) == json.loads(DASHBOARD_PATH.read_text())
        parents = [r for r in mocks.created if r.typ == "clawbot:infra:Dashboard"]
        assert parents and parents[0].name == "clawbot"

    return dash.config_map_name.apply(lambda n: check([n]))


def test_a_broken_dashboard_file_is_refused_with_its_name(tmp_path: Path) -> None:
    bad = tmp_path / "clawbot.json"
    bad.write_text("{not json")
    with pytest.raises(DashboardError, match=r"clawbot\.json is not valid JSON"):
        load_dashboard(bad)
    bad.write_text('{"title": "x"}')
    with pytest.raises(DashboardError, match="uid and panels"):
        load_dashboard(bad)
    with pytest.raises(DashboardError, match="cannot be read"):
        load_dashboard(tmp_path / "missing.json")


def test_prod_stack_ships_the_dashboard_and_dev_without_alerts_does_not(prod, dev) -> None:  # type: ignore[no-untyped-def]
    maps = [
        o
        for o in prod.objects
        if o.kind == "ConfigMap" and o.manifest["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    assert len(maps) == 1 and maps[0].namespace == prod.config["namespace"]
    assert json.loads(next(iter(maps[0].manifest["data"].values())))["panels"]
    assert not [
        o
        for o in dev.objects
        if o.kind == "ConfigMap" and "grafana_dashboard" in o.manifest["metadata"].get("labels", {})
    ]
