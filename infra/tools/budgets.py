"""How long `pulumi up` of a stack may wait, from the synthesized program: the longest chain of awaited resources.

    python -m infra.tools.budgets --stack prod

Pulumi waits for each Kubernetes object it awaits (a Deployment's rollout, a Service's endpoints, a DaemonSet, ...) up
to its custom timeout, or the provider's 10-minute default, and an object waits for those it depends on first. So an
update can take as long as the longest dependency chain of those waits. A CI job that runs `pulumi up` needs a limit
above it, or the runner kills `up` midway and leaves the stack locked with pending operations
(tests/ci/test_deploy_budgets.py holds the workflows to it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from infra.settings.values import duration_seconds
from infra.tools.mocks import MockedResource
from infra.tools.synth import SynthError, Synthesis, synthesize

# pulumi-kubernetes awaits these kinds (readiness, endpoints, completion, binding) unless told otherwise, for these
# many seconds; other kinds are done when the API server accepts them.
PROVIDER_DEFAULT_AWAIT_S = 600
AWAITED_KINDS = {
    "Deployment": 600,
    "StatefulSet": 600,
    "DaemonSet": 600,
    "ReplicaSet": 600,
    "Pod": 600,
    "Service": 600,
    "Job": 600,
    "Ingress": 600,
    "PersistentVolumeClaim": 300,
}
# Deletions come last in an update (a stopped canary's Deployment and Service), and the provider waits for them.
DELETE_PHASE_S = PROVIDER_DEFAULT_AWAIT_S
WAIT_FOR_ANNOTATION = "pulumi.com/waitFor"  # any kind with it is awaited too
SKIP_AWAIT_ANNOTATION = "pulumi.com/skipAwait"


@dataclass(frozen=True)
class UpdateWait:
    seconds: int
    chain: tuple[str, ...]  # the resources on the longest chain, first waited for first

    @property
    def minutes(self) -> float:
        return self.seconds / 60


def await_seconds(r: MockedResource) -> int:
    """How long Pulumi may wait for this resource on create or update (the longer of the two)."""
    kind = r.type.rsplit(":", 1)[-1] if r.type.startswith("kubernetes:") else None
    if kind is None or r.read:
        return 0
    annotations = (r.inputs.get("metadata") or {}).get("annotations") or {}
    if str(annotations.get(SKIP_AWAIT_ANNOTATION, "")).lower() == "true":
        return 0
    timeouts = r.options.custom_timeouts or {}
    waits = [duration_seconds(timeouts[k]) or 0 for k in ("create", "update") if timeouts.get(k)]
    if waits:
        return max(waits)
    if kind in AWAITED_KINDS:
        return AWAITED_KINDS[kind]
    return PROVIDER_DEFAULT_AWAIT_S if WAIT_FOR_ANNOTATION in annotations else 0


def update_wait(s: Synthesis) -> UpdateWait:
    """The longest chain of waits through the resources' dependencies (explicit ones and their inputs' sources), then
    the deletions an update ends with."""
    by_urn = {r.options.urn: r for r in s.resources if r.options.urn}
    children: dict[str, list[str]] = {}
    for r in s.resources:
        if r.options.parent in by_urn:
            children.setdefault(r.options.parent, []).append(r.options.urn)

    def expanded(urn: str) -> list[str]:
        """A component stands for its children: depending on it waits for all of them."""
        out = [urn]
        for child in children.get(urn, []):
            out += expanded(child)
        return out

    @cache
    def longest(urn: str) -> tuple[int, tuple[str, ...]]:
        r = by_urn[urn]
        best: tuple[int, tuple[str, ...]] = (0, ())
        for dep in r.options.dependencies:
            for d in expanded(dep):
                if d in by_urn and d != urn:
                    best = max(best, longest(d))
        own = await_seconds(r)
        return best[0] + own, best[1] + ((f"{r.name} ({own}s)",) if own else ())

    seconds, chain = max((longest(u) for u in by_urn), default=(0, ()))
    return UpdateWait(seconds + DELETE_PHASE_S, (*chain, f"deletions ({DELETE_PHASE_S}s)"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.tools.budgets", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--stack", required=True)
    ns = parser.parse_args(argv)
    try:
        wait = update_wait(synthesize(ns.stack))
    except SynthError as exc:
        print(f"budgets: {exc}", file=sys.stderr)
        return 2
    print(f"pulumi up -s {ns.stack} may wait up to {wait.seconds}s ({wait.minutes:.0f} min): {' -> '.join(wait.chain)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
