"""Puts policy/ on sys.path the way the Pulumi policy host does, and builds the args the engine would pass."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

POLICY_DIR = Path(__file__).resolve().parents[2] / "policy"
if str(POLICY_DIR) not in sys.path:
    sys.path.insert(0, str(POLICY_DIR))

from pulumi_policy import (  # noqa: E402
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    StackValidationArgs,
)
from pulumi_policy.proxy import unknown_checking_proxy  # noqa: E402

TOKENS = {
    "Deployment": "kubernetes:apps/v1:Deployment",
    "DaemonSet": "kubernetes:apps/v1:DaemonSet",
    "StatefulSet": "kubernetes:apps/v1:StatefulSet",
    "CronJob": "kubernetes:batch/v1:CronJob",
    "Pod": "kubernetes:core/v1:Pod",
    "Service": "kubernetes:core/v1:Service",
    "ConfigMap": "kubernetes:core/v1:ConfigMap",
    "Secret": "kubernetes:core/v1:Secret",
    "NetworkPolicy": "kubernetes:networking.k8s.io/v1:NetworkPolicy",
    "PrometheusRule": "kubernetes:monitoring.coreos.com/v1:PrometheusRule",
    "HorizontalPodAutoscaler": "kubernetes:autoscaling/v2:HorizontalPodAutoscaler",
}


def policy_options() -> PolicyResourceOptions:
    return PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])


def token_of(kind: str) -> str:
    """The type token of a kind named in TOKENS; a full token (`kubernetes:apps/v1:Deployment`) is kept as it is."""
    return kind if ":" in kind else TOKENS[kind]


def urn(kind: str, name: str) -> str:
    return f"urn:pulumi:dev::clawbot::{token_of(kind)}::{name}"


def resource_args(
    kind: str, props: Mapping[str, Any], config: Mapping[str, Any] | None = None, name: str = "res"
) -> ResourceValidationArgs:
    """What the engine hands a resource policy: the props behind the SDK's unknown-checking proxy."""
    return ResourceValidationArgs(
        token_of(kind), unknown_checking_proxy(dict(props)), urn(kind, name), name, policy_options(), None, config
    )


def stack_resource(kind: str, props: Mapping[str, Any], name: str = "res") -> PolicyResource:
    return PolicyResource(
        token_of(kind), unknown_checking_proxy(dict(props)), urn(kind, name), name, policy_options(), None, None, [], {}
    )


def stack_args(*resources: PolicyResource) -> StackValidationArgs:
    return StackValidationArgs(list(resources))


class Violations(list[tuple[str, str | None]]):
    """A report_violation callback that records what it is told."""

    def __call__(self, message: str, urn: str | None = None) -> None:
        self.append((message, urn))

    @property
    def messages(self) -> list[str]:
        return [m for m, _ in self]
