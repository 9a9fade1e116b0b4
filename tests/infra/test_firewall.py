"""The firewall: TCP 18789 reachable only from the configured CIDRs (and Prometheus), everything else denied."""
from __future__ import annotations

from infra.contract import CHAT_LABELS
from infra.synth import Synthesis


def policies(s: Synthesis) -> dict[str, dict]:
    return {o.name: o.manifest["spec"] for o in s.find("NetworkPolicy")}


def test_default_deny_covers_every_pod_in_both_directions(prod: Synthesis) -> None:
    deny = policies(prod)["clawbot-default-deny"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny


def test_chat_ingress_is_port_18789_from_the_allowed_cidrs_and_monitoring_only(prod: Synthesis) -> None:
    ingress = policies(prod)["clawbot-chat-ingress"]
    assert ingress["podSelector"] == {"matchLabels": CHAT_LABELS}
    sources: list[dict] = []
    for rule in ingress["ingress"]:
        assert rule["ports"] == [{"protocol": "TCP", "port": 18789}]
        sources += rule["from"]
    cidrs = [src["ipBlock"]["cidr"] for src in sources if "ipBlock" in src]
    assert cidrs == ["192.168.1.0/24", "10.8.0.0/16"]
    assert all("except" not in src.get("ipBlock", {}) for src in sources)
    others = [src for src in sources if "ipBlock" not in src]
    assert others == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


def test_load_balancer_source_ranges_are_the_same_cidrs(prod: Synthesis) -> None:
    svc = prod.one("Service", "clawbot").manifest["spec"]
    assert svc["type"] == "LoadBalancer"
    assert svc["loadBalancerSourceRanges"] == ["192.168.1.0/24", "10.8.0.0/16"]
    assert svc["ports"] == [{"name": "http", "port": 18789, "targetPort": "http", "protocol": "TCP"}]
    assert svc["externalTrafficPolicy"] == "Local"
    config = prod.one("ConfigMap", "clawbot-config").manifest["data"]
    assert config["ALLOWED_CIDRS"] == "192.168.1.0/24,10.8.0.0/16"


def test_chat_egress_is_dns_redis_and_https_to_public_addresses_only(prod: Synthesis) -> None:
    egress = policies(prod)["clawbot-chat-egress"]["egress"]
    ports = [sorted((p["protocol"], p["port"]) for p in rule["ports"]) for rule in egress]
    assert ports == [[("TCP", 53), ("UDP", 53)], [("TCP", 6379)], [("TCP", 443)]]
    (hub,) = egress[2]["to"]
    assert hub["ipBlock"]["cidr"] == "0.0.0.0/0"
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(hub["ipBlock"]["except"])
    redis_in = policies(prod)["clawbot-redis-ingress"]["ingress"]
    assert redis_in == [{"from": [{"podSelector": {"matchLabels": CHAT_LABELS}}], "ports": [{"protocol": "TCP", "port": 6379}]}]


def test_dev_has_no_internet_egress_and_no_load_balancer(dev: Synthesis) -> None:
    egress = policies(dev)["clawbot-chat-egress"]["egress"]
    assert [p["port"] for rule in egress for p in rule["ports"]] == [53, 53]
    svc = dev.one("Service", "clawbot").manifest["spec"]
    assert svc["type"] == "ClusterIP" and "loadBalancerSourceRanges" not in svc
