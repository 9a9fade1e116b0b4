"""The service's "security group": default-deny NetworkPolicies, TCP 18789 only from the allowed CIDRs, narrow egress.

The same CIDRs are the Service's `loadBalancerSourceRanges` (set by ChatService from the
same settings), so the cloud load balancer and the CNI enforce one list. The chat pods reach
nothing outside the cluster but the services they call (DNS, Redis, the database, the KMS
endpoint); only the model download Job goes online, to the model hub, and with Cilium by name.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.contract import (
    CHAT_LABELS,
    COMMON_LABELS,
    METRICS_PORT,
    MODEL_DOWNLOAD_LABELS,
    PORT,
    REDIS_LABELS,
    REDIS_PORT,
)
from infra.settings.network import ModelHubEgress

CILIUM_API = "cilium.io/v2"

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


@dataclass(frozen=True)
class EgressTarget:
    """A service outside the cluster that the chat pods call, where it listens: the KMS endpoint, for one."""

    name: str
    cidrs: tuple[str, ...]
    port: int


@dataclass
class ServiceFirewallArgs:
    namespace: pulumi.Input[str]
    allowed_cidrs: tuple[str, ...]
    monitoring_namespace: str = "monitoring"
    redis_enabled: bool = False
    # Where the model download Job may go; None when the model needs no download (and no Job runs).
    model_hub: ModelHubEgress | None = None
    # Every other service the chat pods call beyond DNS, Redis and the database (the KMS endpoint).
    service_egress: tuple[EgressTarget, ...] = field(default_factory=tuple)
    # The NLB's own subnets (ip targets): its health checks come from there, not from the clients.
    health_check_cidrs: tuple[str, ...] = field(default_factory=tuple)
    # The conversation database, when one is configured: where it listens and on which port.
    database_cidrs: tuple[str, ...] = field(default_factory=tuple)
    database_port: int = 5432
    name_prefix: str = "clawbot"


def _ip_block(cidr: str) -> dict[str, Any]:
    net = ipaddress.ip_network(cidr)
    excepts = [
        p
        for p in PRIVATE_RANGES
        if isinstance(net, ipaddress.IPv4Network)
        and ipaddress.IPv4Network(p).subnet_of(net)
        and ipaddress.IPv4Network(p) != net
    ]
    block: dict[str, Any] = {"cidr": cidr}
    if excepts:
        block["except"] = excepts
    return block


def chat_ingress_rules(args: ServiceFirewallArgs) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    if args.allowed_cidrs:
        rules.append(
            {
                "from": [{"ipBlock": {"cidr": c}} for c in args.allowed_cidrs],
                "ports": [{"protocol": "TCP", "port": PORT}],
            }
        )
    health_checkers = [c for c in args.health_check_cidrs if c not in args.allowed_cidrs]
    if health_checkers:
        # Without this every target is unhealthy and the NLB sends nothing. The app still applies ALLOWED_CIDRS to
        # the API routes, so from these addresses only the unauthenticated probes and pages answer.
        rules.append(
            {"from": [{"ipBlock": {"cidr": c}} for c in health_checkers], "ports": [{"protocol": "TCP", "port": PORT}]}
        )
    # Prometheus scrapes /metrics on its own port, from its own namespace only.
    rules.append(
        {
            "from": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": args.monitoring_namespace}}}
            ],
            "ports": [{"protocol": "TCP", "port": METRICS_PORT}],
        }
    )
    return rules


def chat_egress_rules(args: ServiceFirewallArgs) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [DNS_EGRESS]
    if args.database_cidrs:
        rules.append(
            {
                "to": [{"ipBlock": {"cidr": c}} for c in args.database_cidrs],
                "ports": [{"protocol": "TCP", "port": args.database_port}],
            }
        )
    if args.redis_enabled:
        rules.append(
            {
                "to": [{"podSelector": {"matchLabels": dict(REDIS_LABELS)}}],
                "ports": [{"protocol": "TCP", "port": REDIS_PORT}],
            }
        )
    for target in args.service_egress:
        # A target without CIDRs (the API server, where kubernetesApiCidrs is unset) is any address on its port.
        to = [{"ipBlock": {"cidr": c}} for c in target.cidrs]
        rules.append({**({"to": to} if to else {}), "ports": [{"protocol": "TCP", "port": target.port}]})
    return rules


def model_download_egress_rules(hub: ModelHubEgress) -> list[dict[str, Any]]:
    """DNS, and HTTPS to the hub's addresses (or the proxy's, on its port). With Cilium the hub is reached by name
    through the CiliumNetworkPolicy instead: an address rule here would admit more than the names."""
    rules: list[dict[str, Any]] = [DNS_EGRESS]
    if not hub.by_name:
        # A proxy listens at private addresses; HTTPS straight to the hub goes to public ones only.
        blocks = [{"cidr": c} for c in hub.cidrs] if hub.proxy else [_ip_block(c) for c in hub.cidrs]
        rules.append({"to": [{"ipBlock": b} for b in blocks], "ports": [{"protocol": "TCP", "port": hub.port}]})
    return rules


def model_download_fqdn_spec(hub: ModelHubEgress) -> dict[str, Any]:
    """Cilium: the download Job reaches the hub's names on 443 and nothing else. Its DNS answers must pass Cilium's DNS
    proxy (the `dns` rule), which is how toFQDNs learns the addresses behind the names."""
    names = [{"matchPattern": h} if "*" in h else {"matchName": h} for h in hub.hosts]
    return {
        "endpointSelector": {"matchLabels": dict(MODEL_DOWNLOAD_LABELS)},
        "egress": [
            {
                "toEndpoints": [
                    {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system", "k8s:k8s-app": "kube-dns"}}
                ],
                "toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}], "rules": {"dns": [{"matchPattern": "*"}]}}],
            },
            {"toFQDNs": names, "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]},
        ],
    }


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
            {
                "podSelector": {"matchLabels": dict(CHAT_LABELS)},
                "policyTypes": ["Ingress"],
                "ingress": chat_ingress_rules(args),
            },
        )
        self.chat_egress = policy(
            "chat-egress",
            {
                "podSelector": {"matchLabels": dict(CHAT_LABELS)},
                "policyTypes": ["Egress"],
                "egress": chat_egress_rules(args),
            },
        )
        policies = [self.default_deny, self.chat_ingress, self.chat_egress]
        self.model_download_egress = None
        self.model_download_fqdns = None
        if args.model_hub is not None:
            self.model_download_egress = policy(
                "model-download-egress",
                {
                    "podSelector": {"matchLabels": dict(MODEL_DOWNLOAD_LABELS)},
                    "policyTypes": ["Egress"],
                    "egress": model_download_egress_rules(args.model_hub),
                },
            )
            policies.append(self.model_download_egress)
            if args.model_hub.by_name:
                self.model_download_fqdns = k8s.apiextensions.CustomResource(
                    f"{name}-model-download-fqdns",
                    api_version=CILIUM_API,
                    kind="CiliumNetworkPolicy",
                    metadata={
                        "name": f"{prefix}-model-download",
                        "namespace": args.namespace,
                        "labels": dict(COMMON_LABELS),
                    },
                    spec=model_download_fqdn_spec(args.model_hub),
                    opts=child,
                )
        if args.redis_enabled:
            self.redis_ingress = policy(
                "redis-ingress",
                {
                    "podSelector": {"matchLabels": dict(REDIS_LABELS)},
                    "policyTypes": ["Ingress"],
                    "ingress": [
                        {
                            "from": [{"podSelector": {"matchLabels": dict(CHAT_LABELS)}}],
                            "ports": [{"protocol": "TCP", "port": REDIS_PORT}],
                        }
                    ],
                },
            )
            policies.append(self.redis_ingress)
        self.policy_names = pulumi.Output.all(*[p.metadata["name"] for p in policies])
        self.register_outputs(
            {
                "policies": self.policy_names,
                "allowedCidrs": list(args.allowed_cidrs),
                "healthCheckCidrs": list(args.health_check_cidrs),
            }
        )
