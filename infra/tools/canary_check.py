"""The deploy workflow's soak: watch a canary for a while and say whether it may be promoted.

    python -m infra.tools.canary_check --namespace clawbot --soak-seconds 900

Every `--interval` seconds until the soak ends, through `kubectl` (the workflow's kubeconfig):

- the canary Deployment has all its pods ready and none of them has restarted since the soak began;

and at the end, from Prometheus (reached through the API server's service proxy, so no port is opened):

- the canary served at least `--min-requests` requests over the soak (an idle canary proves nothing), and
- its share of 5xx answers is not above both `--max-error-percent` and twice the stable set's share.

The `track` label on `clawbot_requests_total` comes from the ServiceMonitor's podTargetLabels. Exit status 0
means promote; 1 means do not (the reason is printed); 2 means the check itself could not run.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CANARY_DEPLOYMENT = "clawbot-canary"
CANARY_PODS = "app.kubernetes.io/name=clawbot,app.kubernetes.io/component=chat,track=canary"


class CheckError(RuntimeError):
    """The check could not run (kubectl or Prometheus failed): neither a pass nor a verdict on the canary."""


class NotPromotable(RuntimeError):
    """The canary failed the soak; the message says why."""


@dataclass(frozen=True)
class TrackErrors:
    requests: float  # requests over the window
    errors: float  # 5xx answers over the window

    @property
    def percent(self) -> float:
        return 100 * self.errors / self.requests if self.requests else 0.0


def kubectl(*args: str) -> Any:
    done = subprocess.run(["kubectl", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise CheckError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()[:500]}")
    return json.loads(done.stdout)


def canary_ready(namespace: str) -> tuple[int, int]:
    """(ready pods, wanted pods) of the canary Deployment's current generation."""
    d = kubectl("-n", namespace, "get", "deployment", CANARY_DEPLOYMENT, "-o", "json")
    status, wanted = d.get("status") or {}, int((d.get("spec") or {}).get("replicas", 1))
    current = status.get("observedGeneration", 0) >= d["metadata"].get("generation", 0)
    ready = int(status.get("updatedReplicas", 0)) if current else 0
    return min(ready, int(status.get("readyReplicas", 0))), wanted


def canary_restarts(namespace: str) -> dict[str, int]:
    pods = kubectl("-n", namespace, "get", "pods", "-l", CANARY_PODS, "-o", "json")["items"]
    return {
        p["metadata"]["name"]: sum(
            int(c.get("restartCount", 0)) for c in (p.get("status") or {}).get("containerStatuses") or []
        )
        for p in pods
    }


def query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    """An instant query through the API server's service proxy: prometheus is `namespace/service:port`."""
    namespace, service = prometheus.split("/", 1)
    path = f"/api/v1/namespaces/{namespace}/services/{service}/proxy/api/v1/query?" + urllib.parse.urlencode(
        {"query": promql}
    )
    answer = kubectl("get", "--raw", path)
    if answer.get("status") != "success":
        raise CheckError(f"Prometheus refused {promql!r}: {answer.get('error', answer)}")
    return list(answer["data"]["result"])


def errors_by_track(prometheus: str, namespace: str, window_s: int) -> dict[str, TrackErrors]:
    window = f"{max(60, window_s)}s"
    selector = f'namespace="{namespace}"'
    totals = {
        r["metric"].get("track", ""): float(r["value"][1])
        for r in query(prometheus, f"sum by (track) (increase(clawbot_requests_total{{{selector}}}[{window}]))")
    }
    errors = {
        r["metric"].get("track", ""): float(r["value"][1])
        for r in query(
            prometheus, f'sum by (track) (increase(clawbot_requests_total{{{selector}, status=~"5.."}}[{window}]))'
        )
    }
    return {
        track: TrackErrors(total, errors.get(track, 0.0)) for track, total in totals.items() if not math.isnan(total)
    }


def judge(by_track: dict[str, TrackErrors], *, max_error_percent: float, min_requests: int) -> str:
    """Why the canary may be promoted, or NotPromotable saying why not."""
    canary = by_track.get("canary", TrackErrors(0, 0))
    stable = by_track.get("stable", TrackErrors(0, 0))
    if canary.requests < min_requests:
        raise NotPromotable(
            f"the canary served {canary.requests:.0f} requests during the soak, fewer than {min_requests}: "
            "there is no evidence it works (soak longer, or when there is traffic)"
        )
    limit = max(max_error_percent, 2 * stable.percent)
    if canary.percent > limit:
        raise NotPromotable(
            f"the canary answered {canary.percent:.1f}% of {canary.requests:.0f} requests with 5xx, above "
            f"{limit:.1f}% (max of {max_error_percent:g}% and twice the stable set's {stable.percent:.1f}%)"
        )
    return (
        f"canary: {canary.percent:.1f}% 5xx of {canary.requests:.0f} requests; stable: {stable.percent:.1f}% of "
        f"{stable.requests:.0f}"
    )


def soak(args: argparse.Namespace) -> str:
    started = time.monotonic()
    ready_at: float | None = None
    baseline: dict[str, int] = {}
    while True:
        ready, wanted = canary_ready(args.namespace)
        now = time.monotonic()
        if ready < wanted:
            if ready_at is not None:
                raise NotPromotable(f"the canary dropped to {ready} of {wanted} pods ready during the soak")
            if now - started > args.ready_timeout:
                raise NotPromotable(f"the canary had {ready} of {wanted} pods ready after {args.ready_timeout}s")
        else:
            restarts = canary_restarts(args.namespace)
            if ready_at is None:
                ready_at, baseline = now, restarts
                print(f"canary-check: {ready}/{wanted} canary pods ready; soaking {args.soak_seconds}s", flush=True)
            restarted = sorted(p for p, n in restarts.items() if n > baseline.get(p, 0))
            if restarted:
                raise NotPromotable(f"canary pod(s) restarted during the soak: {', '.join(restarted)}")
            if now - ready_at >= args.soak_seconds:
                break
        time.sleep(args.interval)
    return judge(
        errors_by_track(args.prometheus, args.namespace, args.soak_seconds),
        max_error_percent=args.max_error_percent,
        min_requests=args.min_requests,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.tools.canary_check", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--soak-seconds", type=int, default=900)
    parser.add_argument("--interval", type=float, default=30)
    parser.add_argument(
        "--ready-timeout", type=int, default=2400, help="how long the canary may take to become ready first"
    )
    parser.add_argument("--prometheus", default="monitoring/prometheus-operated:9090", help="namespace/service:port")
    parser.add_argument("--max-error-percent", type=float, default=5.0)
    parser.add_argument("--min-requests", type=int, default=20)
    args = parser.parse_args(argv)
    try:
        verdict = soak(args)
    except NotPromotable as exc:
        print(f"canary-check: do not promote: {exc}", flush=True)
        return 1
    except CheckError as exc:
        print(f"canary-check: could not check the canary: {exc}", file=sys.stderr, flush=True)
        return 2
    print(f"canary-check: promote: {verdict}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
