"""ClawBot's CrossGuard policies; `POLICIES` is what the pack in policy/__main__.py enforces."""

from __future__ import annotations

from pulumi_policy import Policy

from .ingress import no_public_ingress
from .nodes import nodes_roll_on_purpose, serving_pods_offline
from .observability import has_autoscaler, has_prometheus_rule
from .releases import canary_weight
from .secrets import no_plaintext_secrets
from .tls import encrypted_endpoint
from .workloads import (
    chat_readiness,
    gpu_scheduling,
    non_root_containers,
    resource_limits,
    unprivileged_containers,
)

POLICIES: list[Policy] = [
    no_public_ingress,
    non_root_containers,
    unprivileged_containers,
    resource_limits,
    gpu_scheduling,
    chat_readiness,
    no_plaintext_secrets,
    encrypted_endpoint,
    has_prometheus_rule,
    has_autoscaler,
    canary_weight,
    nodes_roll_on_purpose,
    serving_pods_offline,
]

__all__ = ["POLICIES"]
