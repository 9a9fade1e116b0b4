"""The deploy workflow's soak (infra/tools/canary_check.py) against a stand-in `kubectl` serving a cluster's answers.

The stand-in answers what a cluster and Prometheus would: the canary Deployment, its pods (one answer per call,
so a restart can happen mid-soak), and instant queries through the service proxy. It also checks the PromQL
selects by the labels the program gives the pods.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from infra.tools import canary_check
from infra.tools.canary_check import TrackErrors, judge

KUBECTL = r'''
import json, os, sys, urllib.parse
world_path = os.environ["FAKE_CLUSTER"]
world = json.load(open(world_path))
args = sys.argv[1:]
open(world_path + ".calls", "a").write(json.dumps(args) + "\n")
if args[:4] == ["-n", "clawbot", "get", "deployment"] and args[4] == "clawbot-canary":
    print(json.dumps(world["deployment"]))
elif args[:4] == ["-n", "clawbot", "get", "pods"]:
    assert args[5] == "app.kubernetes.io/name=clawbot,app.kubernetes.io/component=chat,track=canary", args
    pods = world["pods"][0] if len(world["pods"]) == 1 else world["pods"].pop(0)
    json.dump(world, open(world_path, "w"))
    print(json.dumps({"items": pods}))
elif args[:2] == ["get", "--raw"]:
    path, _, query = args[2].partition("?")
    assert path == "/api/v1/namespaces/monitoring/services/prometheus-operated:9090/proxy/api/v1/query", path
    promql = urllib.parse.parse_qs(query)["query"][0]
    assert 'namespace="clawbot"' in promql and "sum by (track)" in promql, promql
    counts = world["errors"] if 'status=~"5.."' in promql else world["requests"]
    result = [{"metric": {"track": t}, "value": [0, str(v)]} for t, v in counts.items()]
    print(json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}))
else:
    print("unexpected kubectl " + " ".join(args), file=sys.stderr)
    sys.exit(1)
'''


def deployment(ready: int, wanted: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": "clawbot-canary", "generation": 2},
        "spec": {"replicas": wanted},
        "status": {"observedGeneration": 2, "updatedReplicas": ready, "readyReplicas": ready},
    }


def pods(*restarts: int) -> list[dict[str, Any]]:
    return [
        {"metadata": {"name": f"clawbot-canary-{i}"}, "status": {"containerStatuses": [{"restartCount": n}]}}
        for i, n in enumerate(restarts)
    ]


@pytest.fixture()
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").write_text(f"#!{sys.executable}\n{KUBECTL}")
    (bin_dir / "kubectl").chmod(0o755)
    world = tmp_path / "world.json"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_CLUSTER", str(world))

    def run(state: dict[str, Any], *extra: str) -> int:
        world.write_text(json.dumps(state))
        return canary_check.main(["--namespace", "clawbot", "--interval", "0", *extra])

    return run


def test_a_healthy_canary_with_traffic_may_be_promoted(cluster, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    code = cluster(
        {
            "deployment": deployment(1),
            "pods": [pods(0)],
            "requests": {"canary": 200, "stable": 1800},
            "errors": {"canary": 1, "stable": 9},
        },
        "--soak-seconds",
        "0",
    )
    assert code == 0 and "canary-check: promote: canary: 0.5% 5xx of 200 requests" in capsys.readouterr().out


@pytest.mark.parametrize(
    "state, soak, reason",
    [
        (
            {
                "deployment": deployment(1),
                "pods": [pods(0)],
                "requests": {"canary": 200, "stable": 1800},
                "errors": {"canary": 30, "stable": 9},
            },
            0,
            "answered 15.0% of 200 requests with 5xx, above 5.0%",
        ),
        (
            {"deployment": deployment(1), "pods": [pods(0)], "requests": {"canary": 5, "stable": 1800}, "errors": {}},
            0,
            "served 5 requests during the soak, fewer than 20",
        ),
        # A long soak, cut short by the restart the second look sees.
        (
            {"deployment": deployment(1), "pods": [pods(0), pods(1)], "requests": {}, "errors": {}},
            3600,
            "canary pod(s) restarted during the soak: clawbot-canary-0",
        ),
        (
            {"deployment": deployment(0), "pods": [pods(0)], "requests": {}, "errors": {}},
            3600,
            "the canary had 0 of 1 pods ready after 0s",
        ),
    ],
    ids=["errors", "idle", "restart", "never-ready"],
)
def test_a_canary_that_fails_the_soak_is_not_promoted(
    cluster, capsys, state: dict[str, Any], soak: int, reason: str
) -> None:  # type: ignore[no-untyped-def]
    code = cluster(state, "--soak-seconds", str(soak), "--ready-timeout", "0")
    assert code == 1 and reason in capsys.readouterr().out


def test_an_outage_of_the_stable_set_too_is_not_blamed_on_the_canary() -> None:
    both_bad = {"canary": TrackErrors(100, 8), "stable": TrackErrors(1000, 60)}  # 8% vs 6%: below twice the stable's
    assert "canary: 8.0% 5xx" in judge(both_bad, max_error_percent=5, min_requests=20)


def test_a_broken_cluster_connection_is_neither_a_pass_nor_a_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").write_text("#!/bin/sh\necho 'Unable to connect to the server' >&2\nexit 1\n")
    (bin_dir / "kubectl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert canary_check.main(["--namespace", "clawbot", "--soak-seconds", "0"]) == 2
