"""The firewall: TCP 18789 reachable only from the configured CIDRs (and Prometheus), everything else denied."""
from __future__ import annotations

from infra.contract import CHAT_LABELS
from infra.tools.synth import Synthesis


def policies(s: Synthesis) -> dict[str, dict]:
    return {o.name: o.manifest["spec"] for o in s.find("NetworkPolicy")}


def test_default_deny_covers_every_pod_in_both_directions(prod: Synthesis) -> None:
    deny = policies(prod)["clawbot-default-deny"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny


def test_chat_ingress_is_port_18789_from_the_allowed_cidrs_and_metrics_from_monitoring_only(prod: Synthesis) -> None:
    ingress = policies(prod)["clawbot-chat-ingress"]
    assert ingress["podSelector"] == {"matchLabels": CHAT_LABELS}
    by_port: dict[int, list[dict]] = {}
    for rule in ingress["ingress"]:
        [port] = rule["ports"]
        assert port["protocol"] == "TCP"
        by_port.setdefault(port["port"], []).extend(rule["from"])
    assert set(by_port) == {18789, 9464}
    # The clients, then the NLB's subnets: its health checks to /readyz come from its own addresses.
    assert [src["ipBlock"]["cidr"] for src in by_port[18789]] == ["192.168.1.0/24", "10.8.0.0/16", "10.0.0.0/16"]
    assert all("except" not in src["ipBlock"] for src in by_port[18789])
    # The metrics port takes Prometheus' namespace and nothing else; the API port takes no namespace at all.
    assert by_port[9464] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


def test_load_balancer_source_ranges_are_the_same_cidrs(prod: Synthesis) -> None:
    svc = prod.one("Service", "clawbot").manifest["spec"]
    assert svc["type"] == "LoadBalancer"
    assert svc["loadBalancerSourceRanges"] == ["192.168.1.0/24", "10.8.0.0/16"]
    assert svc["ports"] == [{"name": "http", "port": 18789, "targetPort": "http", "protocol": "TCP"}]
    assert svc["externalTrafficPolicy"] == "Local"
    config = prod.one("ConfigMap", "clawbot-config").manifest["data"]
    assert config["ALLOWED_CIDRS"] == "192.168.1.0/24,10.8.0.0/16"


def test_chat_egress_is_dns_the_database_redis_and_https_to_public_addresses_only(prod: Synthesis) -> None:
    egress = policies(prod)["clawbot-chat-egress"]["egress"]
    ports = [sorted((p["protocol"], p["port"]) for p in rule["ports"]) for rule in egress]
    assert ports == [[("TCP", 53), ("UDP", 53)], [("TCP", 5432)], [("TCP", 6379)], [("TCP", 443)]]
    assert egress[1]["to"] == [{"ipBlock": {"cidr": "10.0.64.0/20"}}]  # databaseEgressCidrs, the port from the URL
    (hub,) = egress[3]["to"]
    assert hub["ipBlock"]["cidr"] == "0.0.0.0/0"
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(hub["ipBlock"]["except"])
    redis_in = policies(prod)["clawbot-redis-ingress"]["ingress"]
    assert redis_in == [{"from": [{"podSelector": {"matchLabels": CHAT_LABELS}}], "ports": [{"protocol": "TCP", "port": 6379}]}]


def test_dev_has_no_internet_egress_and_no_load_balancer(dev: Synthesis) -> None:
    egress = policies(dev)["clawbot-chat-egress"]["egress"]
    assert [p["port"] for rule in egress for p in rule["ports"]] == [53, 53]
    svc = dev.one("Service", "clawbot").manifest["spec"]
    assert svc["type"] == "ClusterIP" and "loadBalancerSourceRanges" not in svc
