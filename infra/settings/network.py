"""Network settings: how the chat Service is exposed, who may reach it, the NLB in front of it, where egress may go."""
from __future__ import annotations

from dataclasses import dataclass

from infra.settings.values import DNS_LABEL, ConfigError, Raw, boolean, choice, cidrs, config_key, text

SERVICE_TYPES = ("LoadBalancer", "ClusterIP")
OPEN_CIDRS = ("0.0.0.0/0", "::/0")
# The AWS Load Balancer Controller's class: the only one whose annotations this program writes.
LOAD_BALANCER_CLASSES = ("service.k8s.aws/nlb",)
LOAD_BALANCER_SCHEMES = ("internal", "internet-facing")
LOAD_BALANCER_TARGET_TYPES = ("ip", "instance")


@dataclass(frozen=True)
class LoadBalancerSettings:
    load_balancer_class: str
    scheme: str
    target_type: str
    preserve_client_ip: bool
    subnet_cidrs: tuple[str, ...]  # where the NLB's health checks come from (ip targets)


@dataclass(frozen=True)
class NetworkSettings:
    service_type: str
    allowed_cidrs: tuple[str, ...]
    allow_public_ingress: bool  # an open CIDR in allowedCidrs was asked for on purpose
    trusted_proxies: tuple[str, ...]
    monitoring_namespace: str
    model_hub_egress_cidrs: tuple[str, ...]
    load_balancer: LoadBalancerSettings

    @property
    def load_balanced(self) -> bool:
        return self.service_type == "LoadBalancer"

    @property
    def open_cidrs(self) -> tuple[str, ...]:
        """The allowed CIDRs that admit the whole internet."""
        return tuple(c for c in self.allowed_cidrs if c in OPEN_CIDRS)

    @property
    def health_check_cidrs(self) -> tuple[str, ...]:
        """Sources of the NLB's health checks: its own subnets with ip targets; the node (kube-proxy) otherwise."""
        lb = self.load_balancer
        return lb.subnet_cidrs if self.load_balanced and lb.target_type == "ip" else ()


def parse_network(raw: Raw) -> NetworkSettings:
    monitoring_namespace = text(raw, "monitoringNamespace", required=True)
    if not DNS_LABEL.match(monitoring_namespace):
        raise ConfigError(f"{config_key('monitoringNamespace')} must be a DNS label (lowercase letters, digits and '-'), "
                          f"got {monitoring_namespace!r}")
    allowed = cidrs(raw, "allowedCidrs")
    service_type = choice(raw, "serviceType", SERVICE_TYPES)
    if service_type == "LoadBalancer" and not allowed:
        raise ConfigError(
            f"{config_key('allowedCidrs')} must list at least one CIDR when {config_key('serviceType')} is LoadBalancer "
            "(an empty list would leave the load balancer open to everyone)"
        )
    return NetworkSettings(
        service_type=service_type,
        allowed_cidrs=allowed,
        allow_public_ingress=boolean(raw, "allowPublicIngress"),
        trusted_proxies=cidrs(raw, "trustedProxies"),
        monitoring_namespace=monitoring_namespace,
        model_hub_egress_cidrs=cidrs(raw, "modelHubEgressCidrs"),
        load_balancer=_load_balancer(raw, service_type, allowed),
    )


def _load_balancer(raw: Raw, service_type: str, allowed: tuple[str, ...]) -> LoadBalancerSettings:
    lb = LoadBalancerSettings(
        load_balancer_class=choice(raw, "loadBalancerClass", LOAD_BALANCER_CLASSES),
        scheme=choice(raw, "loadBalancerScheme", LOAD_BALANCER_SCHEMES),
        target_type=choice(raw, "loadBalancerTargetType", LOAD_BALANCER_TARGET_TYPES),
        preserve_client_ip=boolean(raw, "preserveClientIp"),
        subnet_cidrs=cidrs(raw, "loadBalancerSubnetCidrs"),
    )
    if service_type != "LoadBalancer":
        return lb
    if not lb.preserve_client_ip and not all(c in OPEN_CIDRS for c in allowed):
        # Without it the pods see the NLB's own addresses: the ipBlocks drop every client, ALLOWED_CIDRS refuses
        # them, and the controller ignores loadBalancerSourceRanges.
        raise ConfigError(
            f"{config_key('preserveClientIp')} false cannot work with {config_key('allowedCidrs')} {list(allowed)}: the pods "
            f"would see the load balancer's addresses instead of the clients', so the NetworkPolicy and ALLOWED_CIDRS would "
            f"refuse every client and the controller ignores loadBalancerSourceRanges; set {config_key('preserveClientIp')}: true"
        )
    if lb.target_type == "ip" and not lb.subnet_cidrs:
        raise ConfigError(
            f"{config_key('loadBalancerSubnetCidrs')} must list the CIDRs of the subnets the NLB sits in (e.g. the VPC CIDR) "
            f"when {config_key('loadBalancerTargetType')} is ip: its health checks come from there and the NetworkPolicy "
            "must admit them"
        )
    return lb
