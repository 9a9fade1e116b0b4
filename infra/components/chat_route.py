"""ChatRoute: the chat service on the stack's Gateway (Gateway API), with a canary's share set by weight.

An HTTPRoute attaches to the Gateway the stack names and forwards every request to one of two Services, one per
track (stable, canary), in the proportion of their weights: the canary's share is its weight at any replica count,
where the chat Service would spread connections over ready pods. A NetworkPolicy admits the Gateway's data plane to
the API port. Weights are core Gateway API (`HTTPRoute` backendRefs, "Support for weight: Core"); which controllers
honour them is in docs/operations/canary-and-rollouts.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.contract import CANARY, CHAT_LABELS, COMMON_LABELS, PORT, PORT_NAME, STABLE, TRACK_LABEL
from infra.settings.routing import RoutingSettings

GATEWAY_API = "gateway.networking.k8s.io"
HTTP_ROUTE_API = f"{GATEWAY_API}/v1"


@dataclass
class ChatRouteArgs:
    namespace: pulumi.Input[str]
    routing: RoutingSettings
    hostname: str  # the name clients use: the route answers for it on the Gateway
    canary_weight_percent: int | None = None  # None: every request goes to the stable set
    # The canary Deployment: the route gives it a share only once its pods are Ready, so no request meets a canary
    # Service without endpoints.
    waits_for: Sequence[pulumi.Resource] = field(default_factory=tuple)
    name_prefix: str = "clawbot"


def track_service_name(prefix: str, track: str) -> str:
    return f"{prefix}-{track}"


def backend_refs(prefix: str, canary_weight_percent: int | None) -> list[dict[str, Any]]:
    """The route's backends: the stable set alone, or both tracks with weights that sum to 100 (percent)."""

    def ref(track: str, weight: int) -> dict[str, Any]:
        return {
            "group": "",
            "kind": "Service",
            "name": track_service_name(prefix, track),
            "port": PORT,
            "weight": weight,
        }

    if canary_weight_percent is None:
        return [ref(STABLE, 100)]
    return [ref(STABLE, 100 - canary_weight_percent), ref(CANARY, canary_weight_percent)]


def route_spec(args: ChatRouteArgs) -> dict[str, Any]:
    r = args.routing
    parent: dict[str, Any] = {
        "group": GATEWAY_API,
        "kind": "Gateway",
        "namespace": r.gateway_namespace,
        "name": r.gateway_name,
    }
    if r.listener:
        parent["sectionName"] = r.listener
    return {
        "parentRefs": [parent],
        "hostnames": [args.hostname],
        "rules": [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": backend_refs(args.name_prefix, args.canary_weight_percent),
            }
        ],
    }


def gateway_ingress_rules(r: RoutingSettings) -> list[dict[str, Any]]:
    """The Gateway's data plane to the API port: its pods' namespace, and the addresses of one outside the cluster."""
    sources: list[dict[str, Any]] = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": r.proxy_namespace}}}
    ]
    sources += [{"ipBlock": {"cidr": c}} for c in r.source_cidrs]
    return [{"from": sources, "ports": [{"protocol": "TCP", "port": PORT}]}]


class ChatRoute(pulumi.ComponentResource):
    endpoint_url: pulumi.Output[str]

    def __init__(self, name: str, args: ChatRouteArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("clawbot:infra:ChatRoute", name, None, opts)
        prefix, labels = args.name_prefix, dict(COMMON_LABELS)
        child = pulumi.ResourceOptions(parent=self)

        def track_service(track: str) -> k8s.core.v1.Service:
            return k8s.core.v1.Service(
                f"{name}-{track}",
                metadata={
                    "name": track_service_name(prefix, track),
                    "namespace": args.namespace,
                    "labels": {**CHAT_LABELS, **labels, TRACK_LABEL: track},
                },
                spec={
                    "type": "ClusterIP",
                    "selector": {**CHAT_LABELS, TRACK_LABEL: track},
                    "ports": [{"name": PORT_NAME, "port": PORT, "targetPort": PORT_NAME, "protocol": "TCP"}],
                },
                opts=child,
            )

        self.services = [track_service(STABLE)]
        if args.canary_weight_percent is not None:
            self.services.append(track_service(CANARY))
        self.route = k8s.apiextensions.CustomResource(
            name,
            api_version=HTTP_ROUTE_API,
            kind="HTTPRoute",
            metadata={"name": prefix, "namespace": args.namespace, "labels": labels},
            spec=route_spec(args),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*self.services, *args.waits_for]),
        )
        self.network_policy = k8s.networking.v1.NetworkPolicy(
            f"{name}-gateway-ingress",
            metadata={"name": f"{prefix}-gateway-ingress", "namespace": args.namespace, "labels": labels},
            spec={
                "podSelector": {"matchLabels": dict(CHAT_LABELS)},
                "policyTypes": ["Ingress"],
                "ingress": gateway_ingress_rules(args.routing),
            },
            opts=child,
        )
        # The listener's port is the Gateway's (443 for HTTPS); production attaches to its HTTPS listener.
        self.endpoint_url = pulumi.Output.from_input(f"https://{args.hostname}")
        self.register_outputs({"endpointUrl": self.endpoint_url})
