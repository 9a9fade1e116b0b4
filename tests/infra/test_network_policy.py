"""The NetworkPolicy evaluator (tests/infra/network_policy.py) on hand-written policies, one rule of the API each,
before the firewall tests trust it with the synthesized ones."""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.network_policy import Address, Cluster, Pod, policy_types, selector_matches

WEB = Pod("shop", {"app": "web", "tier": "front"}, "10.1.0.10", {"http": 8080})
API = Pod("shop", {"app": "api"}, "10.1.0.11", {"grpc": 9000})
OTHER_NS = Pod("tools", {"app": "web"}, "10.1.5.5")
MONITORING = Pod("monitoring", {"app": "prometheus"}, "10.1.9.9")
OUTSIDE = Address("203.0.113.7")


def policy(namespace: str, spec: dict[str, Any], name: str = "p") -> dict[str, Any]:
    return {"kind": "NetworkPolicy", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def test_a_pod_no_policy_selects_is_open_both_ways() -> None:
    cluster = Cluster([policy("shop", {"podSelector": {"matchLabels": {"app": "api"}}, "policyTypes": ["Ingress"]})])
    assert cluster.connects(OUTSIDE, WEB, 8080) and cluster.connects(WEB, OUTSIDE, 443)


def test_default_deny_closes_every_pod_of_its_namespace_only() -> None:
    cluster = Cluster([policy("shop", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})])
    assert not cluster.connects(OUTSIDE, WEB, 8080) and not cluster.connects(WEB, OUTSIDE, 443)
    assert cluster.connects(OUTSIDE, OTHER_NS, 8080)


def test_policy_types_default_to_ingress_and_to_egress_when_egress_rules_exist() -> None:
    assert policy_types({"podSelector": {}}) == {"Ingress"}
    assert policy_types({"podSelector": {}, "egress": []}) == {"Ingress", "Egress"}
    assert policy_types({"podSelector": {}, "policyTypes": ["Egress"]}) == {"Egress"}


@pytest.mark.parametrize(
    "selector, labels, matches",
    [
        ({}, {"a": "1"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"}, True),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": ""}, False),
    ],
)
def test_label_selectors(selector: dict[str, Any], labels: dict[str, str], matches: bool) -> None:
    assert selector_matches(selector, labels) is matches


def test_ip_block_admits_its_range_but_not_the_excepted_part_and_applies_to_pod_addresses_too() -> None:
    cluster = Cluster(
        [
            policy(
                "shop",
                {
                    "podSelector": {},
                    "ingress": [{"from": [{"ipBlock": {"cidr": "10.1.0.0/16", "except": ["10.1.5.0/24"]}}]}],
                },
            )
        ]
    )
    assert cluster.connects(Address("10.1.200.1"), API, 9000)
    assert not cluster.connects(Address("10.1.5.1"), API, 9000)
    assert cluster.connects(MONITORING, API, 9000)  # a pod whose address is in the block
    assert not cluster.connects(OTHER_NS, API, 9000)  # ... and one in the excepted part
    assert not cluster.connects(OUTSIDE, API, 9000)


def test_pod_selector_alone_means_the_policys_own_namespace() -> None:
    cluster = Cluster(
        [
            policy(
                "shop",
                {
                    "podSelector": {"matchLabels": {"app": "api"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}],
                },
            )
        ]
    )
    assert cluster.connects(WEB, API, 9000)
    assert not cluster.connects(OTHER_NS, API, 9000)  # same labels, another namespace
    assert not cluster.connects(OUTSIDE, API, 9000)


def test_namespace_selector_alone_admits_every_pod_there_and_with_a_pod_selector_only_those_pods() -> None:
    only_ns = Cluster(
        [
            policy(
                "shop",
                {
                    "podSelector": {},
                    "ingress": [
                        {
                            "from": [
                                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
                            ]
                        }
                    ],
                },
            )
        ]
    )
    assert only_ns.connects(MONITORING, API, 9000) and not only_ns.connects(WEB, API, 9000)
    both = Cluster(
        [
            policy(
                "shop",
                {
                    "podSelector": {},
                    "ingress": [
                        {
                            "from": [
                                {
                                    "namespaceSelector": {"matchLabels": {"team": "ops"}},
                                    "podSelector": {"matchLabels": {"app": "grafana"}},
                                }
                            ]
                        }
                    ],
                },
            )
        ],
        namespace_labels={"monitoring": {"team": "ops"}},
    )
    assert not both.connects(MONITORING, API, 9000)  # right namespace, wrong pod
    assert both.connects(Pod("monitoring", {"app": "grafana"}, "10.1.9.10"), API, 9000)
    # Two peers are an OR: either the namespace or the pods.
    either = Cluster(
        [
            policy(
                "shop",
                {
                    "podSelector": {},
                    "ingress": [
                        {
                            "from": [
                                {"namespaceSelector": {"matchLabels": {"team": "ops"}}},
                                {"podSelector": {"matchLabels": {"app": "web"}}},
                            ]
                        }
                    ],
                },
            )
        ],
        namespace_labels={"monitoring": {"team": "ops"}},
    )
    assert either.connects(MONITORING, API, 9000) and either.connects(WEB, API, 9000)
    assert not either.connects(OTHER_NS, API, 9000)


def test_empty_from_and_ports_match_everything_and_ports_narrow_by_number_range_name_and_protocol() -> None:
    open_rule = Cluster([policy("shop", {"podSelector": {}, "ingress": [{}]})])
    assert open_rule.connects(OUTSIDE, API, 1) and open_rule.connects(OTHER_NS, API, 65535, "UDP")
    ports = Cluster(
        [
            policy(
                "shop",
                {
                    "podSelector": {},
                    "ingress": [
                        {
                            "ports": [
                                {"protocol": "TCP", "port": 9000},
                                {"protocol": "UDP", "port": 5000, "endPort": 5010},
                                {"port": "http"},
                            ]
                        }
                    ],
                },
            )
        ]
    )
    assert ports.connects(OUTSIDE, API, 9000) and not ports.connects(OUTSIDE, API, 9000, "UDP")
    assert ports.connects(OUTSIDE, API, 5005, "UDP") and not ports.connects(OUTSIDE, API, 5011, "UDP")
    assert ports.connects(OUTSIDE, WEB, 8080)  # the named port resolves on the destination pod
    assert not ports.connects(OUTSIDE, API, 8080)  # API has no port named http


def test_pod_to_pod_needs_the_sources_egress_and_the_destinations_ingress() -> None:
    ingress_only = [
        policy(
            "shop",
            {
                "podSelector": {"matchLabels": {"app": "api"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}],
            },
            "in",
        )
    ]
    deny_egress = [policy("shop", {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"]}, "out")]
    assert Cluster(ingress_only).connects(WEB, API, 9000)
    assert not Cluster(ingress_only + deny_egress).connects(WEB, API, 9000)
    allow_egress = [
        policy(
            "shop",
            {
                "podSelector": {"matchLabels": {"app": "web"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "api"}}}], "ports": [{"port": "grpc"}]}],
            },
            "out2",
        )
    ]
    assert Cluster(ingress_only + deny_egress + allow_egress).connects(WEB, API, 9000)
    assert not Cluster(deny_egress + allow_egress).connects(WEB, OUTSIDE, 9000)
