"""A small evaluator of Kubernetes NetworkPolicy (networking.k8s.io/v1) semantics, to prove who may reach whom.

Given the policies a stack creates, it answers whether a connection from a source (a pod, or an address outside the
cluster) to a destination on a port is allowed, the way the API documents it:

- a pod that no policy of a direction selects is open in that direction; once one selects it, only what some rule of
  a selecting policy allows passes (policies are additive allow-lists);
- `policyTypes` defaults to Ingress, plus Egress when the policy has `egress` rules;
- a peer is an `ipBlock` (cidr minus `except`), or pods: `podSelector` alone means pods of the policy's namespace,
  `namespaceSelector` alone every pod of the matching namespaces, both in one peer their intersection; an empty or
  missing `from`/`to` matches every source/destination, an empty or missing `ports` every port;
- a port is a number, a range up to `endPort`, or a name looked up in the destination pod's container ports;
- between two pods both directions must allow it: the source's egress and the destination's ingress.

`ipBlock` is applied to pod addresses too: the API leaves that to the plugin, and the common ones (the AWS VPC CNI,
Calico, Cilium) match pod addresses inside a block, so that is the case a proof of isolation must assume.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: Mapping[str, str]
    ip: str
    ports: Mapping[str, int] = field(default_factory=dict)  # named container ports


@dataclass(frozen=True)
class Address:
    """An endpoint outside the cluster: a client, a load balancer's health checker, a database, the internet."""

    ip: str


Endpoint = Pod | Address


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector: every matchLabels pair and every matchExpressions requirement; an empty one matches all."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ValueError(f"unknown selector operator {op!r}")
    return True


def policy_types(spec: Mapping[str, Any]) -> set[str]:
    if spec.get("policyTypes"):
        return set(spec["policyTypes"])
    return {"Ingress"} | ({"Egress"} if "egress" in spec else set())


def _in_block(ip: str, block: Mapping[str, Any]) -> bool:
    address = ipaddress.ip_address(ip)
    net = ipaddress.ip_network(block["cidr"])
    if address.version != net.version or address not in net:
        return False
    return not any(address in ipaddress.ip_network(e) for e in block.get("except") or [])


class Cluster:
    """The policies of a cluster and the labels of its namespaces (each carries its kubernetes.io/metadata.name)."""

    def __init__(
        self, policies: Iterable[Mapping[str, Any]], namespace_labels: Mapping[str, Mapping[str, str]] | None = None
    ):
        self.policies = [p for p in policies if p.get("kind", "NetworkPolicy") == "NetworkPolicy"]
        self._namespace_labels = {k: dict(v) for k, v in (namespace_labels or {}).items()}

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        return {**self._namespace_labels.get(namespace, {}), NAMESPACE_NAME_LABEL: namespace}

    def selecting(self, pod: Pod, direction: str) -> list[Mapping[str, Any]]:
        """The policies that select `pod` for `direction` (Ingress or Egress)."""
        return [
            p
            for p in self.policies
            if (p.get("metadata") or {}).get("namespace") == pod.namespace
            and selector_matches(p["spec"].get("podSelector"), pod.labels)
            and direction in policy_types(p["spec"])
        ]

    def peer_matches(self, peer: Mapping[str, Any], policy_namespace: str, other: Endpoint) -> bool:
        if "ipBlock" in peer:
            return _in_block(other.ip, peer["ipBlock"])
        if not isinstance(other, Pod):
            return False  # pod and namespace selectors name pods, never addresses outside the cluster
        if "namespaceSelector" in peer:
            if not selector_matches(peer["namespaceSelector"], self.namespace_labels(other.namespace)):
                return False
        elif other.namespace != policy_namespace:
            return False
        return "podSelector" not in peer or selector_matches(peer["podSelector"], other.labels)

    @staticmethod
    def port_matches(ports: list[Mapping[str, Any]] | None, port: int, protocol: str, destination: Endpoint) -> bool:
        if not ports:
            return True
        for p in ports:
            if p.get("protocol", "TCP") != protocol:
                continue
            want = p.get("port")
            if want is None:
                return True
            if isinstance(want, str):
                if isinstance(destination, Pod) and destination.ports.get(want) == port:
                    return True
                continue
            if want == port or (p.get("endPort") is not None and want <= port <= p["endPort"]):
                return True
        return False

    def _allowed(self, pod: Pod, direction: str, other: Endpoint, port: int, protocol: str) -> bool:
        policies = self.selecting(pod, direction)
        if not policies:
            return True
        rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        destination = pod if direction == "Ingress" else other
        for policy in policies:
            namespace = policy["metadata"]["namespace"]
            for rule in policy["spec"].get(rules_key) or []:
                peers = rule.get(peers_key)
                if peers and not any(self.peer_matches(peer, namespace, other) for peer in peers):
                    continue
                if self.port_matches(rule.get("ports"), port, protocol, destination):
                    return True
        return False

    def ingress_allowed(self, destination: Pod, source: Endpoint, port: int, protocol: str = "TCP") -> bool:
        return self._allowed(destination, "Ingress", source, port, protocol)

    def egress_allowed(self, source: Pod, destination: Endpoint, port: int, protocol: str = "TCP") -> bool:
        return self._allowed(source, "Egress", destination, port, protocol)

    def connects(self, source: Endpoint, destination: Endpoint, port: int, protocol: str = "TCP") -> bool:
        """Whether a connection from `source` to `destination`'s port gets through every policy on the way."""
        if isinstance(source, Pod) and not self.egress_allowed(source, destination, port, protocol):
            return False
        return not isinstance(destination, Pod) or self.ingress_allowed(destination, source, port, protocol)
