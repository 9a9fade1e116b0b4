"""Policies on how the GPU nodes roll and what the serving pods reach: a pinned AMI, bounded drains, a do-not-disrupt
that ends, and no way out of the cluster from the chat pods."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from pulumi_policy import EnforcementLevel, ReportViolation, ResourceValidationArgs, ResourceValidationPolicy, Severity

from .kube import CHAT_APP_LABEL, display_name, kind_of, known, known_items, known_list, workload

DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"
CHAT_COMPONENT = ("app.kubernetes.io/component", "chat")


def _check_node_class(props: Mapping[str, Any], name: str, report_violation: ReportViolation) -> None:
    for term in known_list(known(known(props, "spec"), "amiSelectorTerms")):
        alias = known(term, "alias")
        if isinstance(alias, str) and alias.endswith("@latest"):
            report_violation(
                f"EC2NodeClass {name} selects AMI alias {alias}: every AMI AWS publishes drifts every node of its pools "
                "at a time nobody chose. Pin a release (e.g. al2023@v20260724) and bump it on purpose",
                None,
            )


def _check_node_pool(props: Mapping[str, Any], name: str, report_violation: ReportViolation) -> None:
    node_spec = known(known(known(props, "spec"), "template"), "spec")
    if not known(node_spec, "terminationGracePeriod"):
        report_violation(
            f"NodePool {name} sets no spec.template.spec.terminationGracePeriod: a drain held by a PDB or by a pod's "
            f"{DO_NOT_DISRUPT} never ends, so drift never replaces the node. Bound it (nodeTerminationGracePeriod)",
            None,
        )


def _check_pods(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    w = workload(args.resource_type, args.props, args.name)
    if w is None:
        return
    template = known(known(w.props, "spec"), "template")
    value = known(known(known(template, "metadata"), "annotations"), DO_NOT_DISRUPT)
    if value == "true":
        report_violation(
            f"{w.kind} {w.name} marks its pods {DO_NOT_DISRUPT}: \"true\", which blocks drift for as long as they run. "
            "Give a duration (the time the pod needs to start, e.g. 30m) and let the PDB pace the drains",
            None,
        )


def validate_nodes_roll(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    kind = kind_of(args.resource_type)
    name = display_name(args.props, args.name)
    if kind == "EC2NodeClass":
        _check_node_class(args.props, name, report_violation)
    elif kind == "NodePool":
        _check_node_pool(args.props, name, report_violation)
    else:
        _check_pods(args, report_violation)


nodes_roll_on_purpose = ResourceValidationPolicy(
    name="nodes-roll-on-purpose",
    description="GPU nodes take a pinned AMI, their drains are bounded, and no pod blocks drift for good.",
    validate=validate_nodes_roll,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.HIGH,
    remediation_steps="Set nodeClassAmiAlias to a release (family@vYYYYMMDD), nodeTerminationGracePeriod, and a "
    "duration for karpenter.sh/do-not-disrupt.",
)


def _selects_chat_pods(spec: Any) -> bool:
    labels = dict(known_items(known(known(spec, "podSelector"), "matchLabels")))
    return labels.get(CHAT_APP_LABEL[0]) == CHAT_APP_LABEL[1] and labels.get(CHAT_COMPONENT[0]) == CHAT_COMPONENT[1]


def _public(cidr: str) -> bool:
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return True  # not a network we can vouch for
    return not net.is_private


def validate_serving_pods_offline(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if kind_of(args.resource_type) != "NetworkPolicy":
        return
    spec = known(args.props, "spec")
    if not _selects_chat_pods(spec):
        return
    name = display_name(args.props, args.name)
    for index, rule in enumerate(known_list(known(spec, "egress"))):
        peers = known_list(known(rule, "to"))
        if not peers:
            report_violation(
                f"NetworkPolicy {name} egress rule {index} has no `to`: the chat pods could reach anything", None
            )
            continue
        for peer in peers:
            cidr = known(known(peer, "ipBlock"), "cidr")
            if isinstance(cidr, str) and _public(cidr):
                report_violation(
                    f"NetworkPolicy {name} egress rule {index} lets the chat pods reach {cidr}, outside the cluster's "
                    "private networks. The model is fetched by the model download Job; the chat pods reach DNS, Redis, "
                    "the database and the KMS endpoint only",
                    None,
                )


serving_pods_offline = ResourceValidationPolicy(
    name="serving-pods-stay-in-cluster",
    description="No NetworkPolicy lets the chat pods reach a public address; only the model download Job goes online.",
    validate=validate_serving_pods_offline,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.HIGH,
    remediation_steps="Give the hub egress to the model download Job (modelHubEgressCidrs, modelHubProxy or "
    "ciliumPolicies), never to the chat pods.",
)
