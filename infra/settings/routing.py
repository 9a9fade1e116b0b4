"""Routing settings: the Gateway API Gateway in front of the chat pods, when the stack names one.

With a Gateway the program attaches an HTTPRoute to it, and a canary's share of the requests is the route's weight,
whatever the replica counts. Without one the chat Service (and the NLB in front of it) spreads connections over the
ready pods, so a canary's share is its pods over all pods (checks.canary_share_is_served holds it to the weight).
"""

from __future__ import annotations

from dataclasses import dataclass

from infra.settings.values import DNS_LABEL, DNS_SUBDOMAIN, ConfigError, Raw, cidrs, config_key, text


@dataclass(frozen=True)
class RoutingSettings:
    gateway_namespace: str  # '' without a Gateway
    gateway_name: str
    listener: str  # the listener (sectionName) the route attaches to; '' for every listener that admits it
    proxy_namespace: str  # where an in-cluster data plane runs: its pods are admitted to the API port
    source_cidrs: tuple[str, ...]  # where a data plane outside the cluster (an ALB) connects from

    @property
    def gateway(self) -> bool:
        return bool(self.gateway_name)


def parse_routing(raw: Raw) -> RoutingSettings:
    ref = text(raw, "gateway").strip()
    listener = text(raw, "gatewayListener").strip()
    proxy_namespace = text(raw, "gatewayProxyNamespace").strip()
    sources = cidrs(raw, "gatewaySourceCidrs")
    if not ref:
        stray = [
            k
            for k, v in (
                ("gatewayListener", listener),
                ("gatewayProxyNamespace", proxy_namespace),
                ("gatewaySourceCidrs", sources),
            )
            if v
        ]
        if stray:
            raise ConfigError(
                f"{', '.join(config_key(k) for k in stray)} only apply with {config_key('gateway')} "
                "(NAMESPACE/NAME of the Gateway the HTTPRoute attaches to); set it, or remove them"
            )
        return RoutingSettings("", "", "", "", ())
    namespace, sep, name = ref.partition("/")
    if not sep or not DNS_LABEL.match(namespace) or not DNS_SUBDOMAIN.match(name):
        raise ConfigError(
            f"{config_key('gateway')} must be NAMESPACE/NAME of a Gateway (kubectl get gateways -A), got {ref!r}"
        )
    if listener and not DNS_LABEL.match(listener):
        raise ConfigError(
            f"{config_key('gatewayListener')} must be a listener name of the Gateway (a DNS label), got {listener!r}"
        )
    if proxy_namespace and not DNS_LABEL.match(proxy_namespace):
        raise ConfigError(f"{config_key('gatewayProxyNamespace')} must be a namespace name, got {proxy_namespace!r}")
    return RoutingSettings(
        gateway_namespace=namespace,
        gateway_name=name,
        listener=listener,
        proxy_namespace=proxy_namespace or namespace,
        source_cidrs=sources,
    )
