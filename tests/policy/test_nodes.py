"""Node and egress policies: a pinned AMI, bounded drains, a do-not-disrupt that ends, chat pods that stay inside."""

from __future__ import annotations

from typing import Any

from guardrails.nodes import nodes_roll_on_purpose, serving_pods_offline
from pulumi_policy import ResourceValidationPolicy

from .conftest import Violations, resource_args
from .objects import deployment

NODE_CLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"
NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"
CHAT = {"app.kubernetes.io/name": "clawbot", "app.kubernetes.io/component": "chat"}


def check(policy: ResourceValidationPolicy, kind: str, props: dict[str, Any]) -> Violations:
    v = Violations()
    policy.validate(resource_args(kind, props), v)
    return v


def test_an_ami_alias_at_latest_is_refused_and_a_release_passes() -> None:
    latest = {"metadata": {"name": "gpu"}, "spec": {"amiSelectorTerms": [{"alias": "al2023@latest"}]}}
    v = check(nodes_roll_on_purpose, NODE_CLASS, latest)
    assert len(v) == 1 and "al2023@latest" in v.messages[0] and "Pin a release" in v.messages[0]
    assert (
        check(nodes_roll_on_purpose, NODE_CLASS, {"spec": {"amiSelectorTerms": [{"alias": "al2023@v20260724"}]}}) == []
    )


def test_a_node_pool_without_a_termination_grace_period_is_refused() -> None:
    v = check(nodes_roll_on_purpose, NODE_POOL, {"metadata": {"name": "gpu"}, "spec": {"template": {"spec": {}}}})
    assert len(v) == 1 and "terminationGracePeriod" in v.messages[0]
    assert (
        check(nodes_roll_on_purpose, NODE_POOL, {"spec": {"template": {"spec": {"terminationGracePeriod": "1h"}}}})
        == []
    )


def test_do_not_disrupt_true_is_refused_and_a_duration_passes() -> None:
    d = deployment()
    d["spec"]["template"].setdefault("metadata", {})["annotations"] = {"karpenter.sh/do-not-disrupt": "true"}
    v = check(nodes_roll_on_purpose, "Deployment", d)
    assert len(v) == 1 and "blocks drift" in v.messages[0]
    d["spec"]["template"]["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] = "30m"
    assert check(nodes_roll_on_purpose, "Deployment", d) == []


def egress_policy(labels: dict[str, str], *rules: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "egress", "namespace": "clawbot"},
        "spec": {"podSelector": {"matchLabels": labels}, "policyTypes": ["Egress"], "egress": list(rules)},
    }


def test_chat_pods_may_not_reach_a_public_address_or_anywhere_at_all() -> None:
    internet = {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}], "ports": [{"port": 443}]}
    v = check(serving_pods_offline, "NetworkPolicy", egress_policy(CHAT, internet))
    assert len(v) == 1 and "0.0.0.0/0" in v.messages[0] and "model download Job" in v.messages[0]
    v = check(serving_pods_offline, "NetworkPolicy", egress_policy(CHAT, {"ports": [{"port": 443}]}))
    assert len(v) == 1 and "no `to`" in v.messages[0]
    inside = [
        {"to": [{"ipBlock": {"cidr": "10.0.64.0/20"}}], "ports": [{"port": 5432}]},
        {"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/component": "redis"}}}]},
    ]
    assert check(serving_pods_offline, "NetworkPolicy", egress_policy(CHAT, *inside)) == []
    # The download Job is the one pod that may go online.
    job = {"app.kubernetes.io/name": "clawbot", "app.kubernetes.io/component": "model-download"}
    assert check(serving_pods_offline, "NetworkPolicy", egress_policy(job, internet)) == []
