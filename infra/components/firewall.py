"""The service's "security group": default-deny NetworkPolicies, TCP 18789 only from the allowed CIDRs, narrow egress.

The same CIDRs are the Service's `loadBalancerSourceRanges` (set by ChatService from the
same settings), so the cloud load balancer and the CNI enforce one list.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.contract import CHAT_LABELS, COMMON_LABELS, METRICS_PORT, PORT, REDIS_LABELS, REDIS_PORT

# Egress "to the internet" never includes private ranges or the cloud metadata service.
PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10")
# Every pod that talks to anything by name needs the cluster DNS.
DNS_EGRESS: dict[str, Any] = {
    "to": [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ],
    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
}


@dataclass
class ServiceFirewallArgs:
    namespace: pulumi.Input[str]
    allowed_cidrs: tuple[str, ...]
    monitoring_namespace: str = "monitoring"
    redis_enabled: bool = False
    model_hub_egress_cidrs: tuple[str, ...] = field(default_factory=tuple)
    # The NLB's own subnets (ip targets): its health checks come from there, not from the clients.
    health_check_cidrs: tuple[str, ...] = field(default_factory=tuple)
    # The conversation database, when one is configured: where it listens and on which port.
    database_cidrs: tuple[str, ...] = field(default_factory=tuple)
    database_port: int = 5432
    name_prefix: str = "clawbot"


def _ip_block(cidr: str) -> dict[str, Any]:
    net = ipaddress.ip_network(cidr)
    excepts = [p for p in PRIVATE_RANGES if net.version == 4 and ipaddress.ip_network(p).subnet_of(net) and ipaddress.ip_network(p) != net]  # type: ignore[arg-type]
    block: dict[str, Any] = {"cidr": cidr}
    if excepts:
        block["except"] = excepts
    return block


def chat_ingress_rules(args: ServiceFirewallArgs) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    if args.allowed_cidrs:
        rules.append({"from": [{"ipBlock": {"cidr": c}} for c in args.allowed_cidrs], "ports": [{"protocol": "TCP", "port": PORT}]})
    health_checkers = [c for c in args.health_check_cidrs if c not in args.allowed_cidrs]
    if health_checkers:
        # Without this every target is unhealthy and the NLB sends nothing. The app still applies ALLOWED_CIDRS to
        # the API routes, so from these addresses only the unauthenticated probes and pages answer.
        rules.append({"from": [{"ipBlock": {"cidr": c}} for c in health_checkers], "ports": [{"protocol": "TCP", "port": PORT}]})
    # Prometheus scrapes /metrics on its own port, from its own namespace only.
    rules.append(
        {
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": args.monitoring_namespace}}}],
            "ports": [{"protocol": "TCP", "port": METRICS_PORT}],
        }
    )
    return rules


def chat_egress_rules(args: ServiceFirewallArgs) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [DNS_EGRESS]
    if args.database_cidrs:
        rules.append({"to": [{"ipBlock": {"cidr": c}} for c in args.database_cidrs],
                      "ports": [{"protocol": "TCP", "port": args.database_port}]})
    if args.redis_enabled:
        rules.append({"to": [{"podSelector": {"matchLabels": dict(REDIS_LABELS)}}], "ports": [{"protocol": "TCP", "port": REDIS_PORT}]})
    if args.model_hub_egress_cidrs:
        rules.append({"to": [{"ipBlock": _ip_block(c)} for c in args.model_hub_egress_cidrs], "ports": [{"protocol": "TCP", "port": 443}]})
    return rules


class ServiceFirewall(pulumi.ComponentResource):
    policy_names: pulumi.Output[list[str]]

    def __init__(self, name: str, args: ServiceFirewallArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("clawbot:infra:ServiceFirewall", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        prefix = args.name_prefix

        def policy(suffix: str, spec: dict[str, Any]) -> k8s.networking.v1.NetworkPolicy:
            return k8s.networking.v1.NetworkPolicy(
                f"{name}-{suffix}",
                metadata={"name": f"{prefix}-{suffix}", "namespace": args.namespace, "labels": dict(COMMON_LABELS)},
                spec=spec,
                opts=child,
            )

        # Everything in the namespace starts with no traffic in or out; the policies below add back what is needed.
        self.default_deny = policy("default-deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
        self.chat_ingress = policy(
            "chat-ingress",
            {"podSelector": {"matchLabels": dict(CHAT_LABELS)}, "policyTypes": ["Ingress"], "ingress": chat_ingress_rules(args)},
        )
        self.chat_egress = policy(
            "chat-egress",
            {"podSelector": {"matchLabels": dict(CHAT_LABELS)}, "policyTypes": ["Egress"], "egress": chat_egress_rules(args)},
        )
        policies = [self.default_deny, self.chat_ingress, self.chat_egress]
        if args.redis_enabled:
            self.redis_ingress = policy(
                "redis-ingress",
                {
                    "podSelector": {"matchLabels": dict(REDIS_LABELS)},
                    "policyTypes": ["Ingress"],
                    "ingress": [{"from": [{"podSelector": {"matchLabels": dict(CHAT_LABELS)}}],
                                 "ports": [{"protocol": "TCP", "port": REDIS_PORT}]}],
                },
            )
            policies.append(self.redis_ingress)
        self.policy_names = pulumi.Output.all(*[p.metadata["name"] for p in policies])  # type: ignore[assignment]
        self.register_outputs({"policies": self.policy_names, "allowedCidrs": list(args.allowed_cidrs),
                               "healthCheckCidrs": list(args.health_check_cidrs)})
