"""Network settings: how the chat Service is exposed, who may reach it, the NLB in front of it, where egress may go."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from infra.settings.values import DNS_LABEL, ConfigError, Raw, boolean, choice, cidrs, config_key, strings, text

SERVICE_TYPES = ("LoadBalancer", "ClusterIP")
OPEN_CIDRS = ("0.0.0.0/0", "::/0")
# The AWS Load Balancer Controller's class: the only one whose annotations this program writes.
LOAD_BALANCER_CLASSES = ("service.k8s.aws/nlb",)
LOAD_BALANCER_SCHEMES = ("internal", "internet-facing")
LOAD_BALANCER_TARGET_TYPES = ("ip", "instance")
# A range this wide is a whole VPC's, not the NLB's subnets': AWS's largest VPC block is a /16 (IPv6: a /56, whose
# subnets are /64s). With the VPC CNI every pod in every namespace has an address inside it.
VPC_WIDE_PREFIX = {4: 16, 6: 56}
# A host name, or a pattern whose `*` stands for any DNS characters (Cilium's toFQDNs matchPattern).
_HOST = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+$")


@dataclass(frozen=True)
class ModelHubEgress:
    """Where the model download Job may go: TCP 443 to `cidrs`, or the proxy at `cidrs` on its own port; with
    Cilium, the names in `hosts` instead of any CIDR. The chat pods themselves never leave the cluster."""

    cidrs: tuple[str, ...]
    proxy: str  # http://HOST:PORT or ""
    hosts: tuple[str, ...]
    cilium: bool

    @property
    def port(self) -> int:
        """The TCP port the Job connects to: the proxy's, or HTTPS."""
        return urlsplit(self.proxy).port or 443 if self.proxy else 443

    @property
    def by_name(self) -> bool:
        """Cilium admits the hub by its names (toFQDNs), not by address."""
        return self.cilium and not self.proxy

    @property
    def configured(self) -> bool:
        return bool(self.hosts) if self.by_name else bool(self.cidrs)


@dataclass(frozen=True)
class LoadBalancerSettings:
    load_balancer_class: str
    scheme: str
    target_type: str
    preserve_client_ip: bool
    subnet_cidrs: tuple[str, ...]  # where the NLB's health checks come from (ip targets)
    vpc_wide_health_checks: bool  # a VPC-wide subnetCidrs entry was asked for on purpose


@dataclass(frozen=True)
class NetworkSettings:
    service_type: str
    allowed_cidrs: tuple[str, ...]
    allow_public_ingress: bool  # an open CIDR in allowedCidrs was asked for on purpose
    trusted_proxies: tuple[str, ...]
    monitoring_namespace: str
    model_hub: ModelHubEgress
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
        raise ConfigError(
            f"{config_key('monitoringNamespace')} must be a DNS label (lowercase letters, digits and '-'), "
            f"got {monitoring_namespace!r}"
        )
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
        model_hub=_model_hub(raw),
        load_balancer=_load_balancer(raw, service_type, allowed),
    )


def _model_hub(raw: Raw) -> ModelHubEgress:
    proxy = text(raw, "modelHubProxy").strip()
    if proxy:
        parts = urlsplit(proxy)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in ("http", "https") or not parts.hostname or not port or parts.path not in ("", "/"):
            raise ConfigError(
                f"{config_key('modelHubProxy')} must be a proxy URL like http://proxy.internal:3128, got {proxy!r}"
            )
    hosts = tuple(h.strip().lower() for h in strings(raw, "modelHubHosts"))
    for host in hosts:
        if not _HOST.match(host):
            raise ConfigError(
                f"{config_key('modelHubHosts')} must hold host names like huggingface.co or *.hf.co, got {host!r}"
            )
    hub = ModelHubEgress(
        cidrs=cidrs(raw, "modelHubEgressCidrs"), proxy=proxy, hosts=hosts, cilium=boolean(raw, "ciliumPolicies")
    )
    if hub.proxy and not hub.cidrs:
        raise ConfigError(
            f"{config_key('modelHubProxy')} needs {config_key('modelHubEgressCidrs')}: the addresses the proxy "
            "listens on, which the model download Job may reach on the proxy's port"
        )
    if hub.by_name and hub.cidrs:
        raise ConfigError(
            f"{config_key('ciliumPolicies')} admits the model download by the names in {config_key('modelHubHosts')}; "
            f"{config_key('modelHubEgressCidrs')} {list(hub.cidrs)} would open TCP 443 to those addresses as well. "
            f"Clear it, or set {config_key('modelHubProxy')} to go through a proxy at those addresses"
        )
    return hub


def _load_balancer(raw: Raw, service_type: str, allowed: tuple[str, ...]) -> LoadBalancerSettings:
    lb = LoadBalancerSettings(
        load_balancer_class=choice(raw, "loadBalancerClass", LOAD_BALANCER_CLASSES),
        scheme=choice(raw, "loadBalancerScheme", LOAD_BALANCER_SCHEMES),
        target_type=choice(raw, "loadBalancerTargetType", LOAD_BALANCER_TARGET_TYPES),
        preserve_client_ip=boolean(raw, "preserveClientIp"),
        subnet_cidrs=cidrs(raw, "loadBalancerSubnetCidrs"),
        vpc_wide_health_checks=boolean(raw, "allowVpcWideHealthChecks"),
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
            f"{config_key('loadBalancerSubnetCidrs')} must list the CIDRs of the subnets the NLB sits in (e.g. 10.0.0.0/24, "
            f"10.0.1.0/24) when {config_key('loadBalancerTargetType')} is ip: its health checks come from there and the "
            "NetworkPolicy must admit them"
        )
    wide = [c for c in lb.subnet_cidrs if vpc_wide(c)]
    if lb.target_type == "ip" and wide and not lb.vpc_wide_health_checks:
        raise ConfigError(
            f"{config_key('loadBalancerSubnetCidrs')} contains {', '.join(wide)}, a whole VPC's range rather than the NLB's "
            "subnets: with the VPC CNI every pod in every namespace has an address in it, so port 18789 would be open to "
            "the whole cluster. List the CIDRs of the NLB's own subnets (aws ec2 describe-subnets, the subnets tagged "
            f"kubernetes.io/role/internal-elb), or set {config_key('allowVpcWideHealthChecks')}: true on purpose"
        )
    return lb


def vpc_wide(cidr: str) -> bool:
    """True for a range as wide as a whole VPC (an IPv4 /16 or wider, an IPv6 /56 or wider)."""
    net = ipaddress.ip_network(cidr)
    return net.prefixlen <= VPC_WIDE_PREFIX[net.version]
