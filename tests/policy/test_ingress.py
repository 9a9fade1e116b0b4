"""no-public-ingress: a LoadBalancer or NetworkPolicy open to 0.0.0.0/0 or ::/0 stops the preview."""

from __future__ import annotations

from typing import Any

import pytest
from guardrails.ingress import no_public_ingress

from .conftest import Violations, resource_args


def lb_service(ranges: list[str] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "LoadBalancer", "ports": [{"port": 18789, "targetPort": 18789}]}
    if ranges is not None:
        spec["loadBalancerSourceRanges"] = ranges
    return {"metadata": {"name": "clawbot", "namespace": "clawbot", "annotations": annotations or {}}, "spec": spec}


def netpol(*rules: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "allow-chat", "namespace": "clawbot"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": list(rules)},
    }


def port_rule(*peers: dict[str, Any]) -> dict[str, Any]:
    rule: dict[str, Any] = {"ports": [{"port": 18789, "protocol": "TCP"}]}
    if peers:
        rule["from"] = list(peers)
    return rule


def check(kind: str, props: dict[str, Any], config: dict[str, Any] | None = None) -> Violations:
    v = Violations()
    no_public_ingress.validate(resource_args(kind, props, config), v)
    return v


def test_load_balancer_restricted_to_client_cidrs_passes() -> None:
    assert check("Service", lb_service(["203.0.113.0/24", "2001:db8::/32"])) == []


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0", " 0.0.0.0/0"])
def test_load_balancer_open_to_the_internet_fails_naming_port_and_cidr(cidr: str) -> None:
    v = check("Service", lb_service(["10.0.0.0/8", cidr]))
    assert len(v) == 1
    assert "clawbot/clawbot" in v.messages[0] and "18789" in v.messages[0] and cidr.strip() in v.messages[0]


def test_load_balancer_without_source_ranges_counts_as_open() -> None:
    v = check("Service", lb_service(None))
    assert len(v) == 1 and "no loadBalancerSourceRanges" in v.messages[0]
    assert check("Service", lb_service([])) != []


def test_source_ranges_annotation_is_honoured() -> None:
    annotation = "service.beta.kubernetes.io/load-balancer-source-ranges"
    assert check("Service", lb_service(None, {annotation: "198.51.100.0/24"})) == []
    assert check("Service", lb_service(None, {annotation: "198.51.100.0/24,0.0.0.0/0"})) != []


def test_text_that_is_not_a_cidr_is_refused() -> None:
    v = check("Service", lb_service(["everyone"]))
    assert len(v) == 1 and "'everyone' is not a CIDR" in v.messages[0]


def test_cluster_ip_service_is_not_internet_facing() -> None:
    props = {"metadata": {"name": "clawbot"}, "spec": {"type": "ClusterIP", "ports": [{"port": 18789}]}}
    assert check("Service", props) == []


def test_public_stack_may_open_a_load_balancer() -> None:
    assert check("Service", lb_service(["0.0.0.0/0"]), {"allowPublicIngress": True}) == []
    assert check("Service", lb_service(["0.0.0.0/0"]), {"allowPublicIngress": False}) != []


def test_network_policy_with_client_cidrs_and_pod_selectors_passes() -> None:
    props = netpol(port_rule({"ipBlock": {"cidr": "203.0.113.0/24"}}, {"podSelector": {"matchLabels": {"a": "b"}}}))
    assert check("NetworkPolicy", props) == []


def test_default_deny_network_policy_passes() -> None:
    props = {"metadata": {"name": "default-deny"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    assert check("NetworkPolicy", props) == []


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0"])
def test_network_policy_ip_block_open_to_everyone_fails(cidr: str) -> None:
    v = check("NetworkPolicy", netpol(port_rule({"ipBlock": {"cidr": cidr, "except": ["10.0.0.0/8"]}})))
    assert len(v) == 1 and "allow-chat" in v.messages[0] and "18789" in v.messages[0]


def test_network_policy_rule_without_sources_admits_everyone() -> None:
    v = check("NetworkPolicy", netpol(port_rule()))
    assert len(v) == 1 and "no `from`" in v.messages[0]
    assert check("NetworkPolicy", netpol({})) != []


def test_other_kinds_are_ignored() -> None:
    assert check("ConfigMap", {"metadata": {"name": "x"}, "data": {"cidr": "0.0.0.0/0"}}) == []
