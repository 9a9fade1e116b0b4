"""Refuses Services and NetworkPolicies that open a port to the whole internet, unless the stack is marked public."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Severity,
)

from .kube import display_name, kind_of, known, known_list

ALLOW_PUBLIC = "allowPublicIngress"
LB_SOURCE_RANGES_ANNOTATION = "service.beta.kubernetes.io/load-balancer-source-ranges"


def _open_cidr(cidr: str) -> bool:
    """True for any /0 network (0.0.0.0/0, ::/0); raises ValueError for text that is not a CIDR."""
    return ipaddress.ip_network(cidr.strip(), strict=False).prefixlen == 0


def _ports(ports: Any) -> str:
    numbers = [str(known(p, "port") or "?") for p in known_list(ports)]
    return "port " + ", ".join(numbers) if numbers else "every port"


def _check_cidrs(cidrs: list[str], where: str, what: str, report_violation: ReportViolation) -> None:
    for cidr in cidrs:
        try:
            is_open = _open_cidr(str(cidr))
        except ValueError:
            report_violation(f"{where}: {cidr!r} is not a CIDR, so it cannot be checked; use e.g. 203.0.113.0/24", None)
            continue
        if is_open:
            report_violation(
                f"{where} opens {what} to {cidr}, i.e. the whole internet. List the client CIDRs instead, "
                f"or mark the stack public with the policy config {ALLOW_PUBLIC}: true",
                None,
            )


def _check_service(props: Mapping[str, Any], name: str, report_violation: ReportViolation) -> None:
    spec = known(props, "spec")
    if known(spec, "type") != "LoadBalancer":
        return  # ClusterIP and headless Services are reachable only inside the cluster
    ports = _ports(known(spec, "ports"))
    ranges = [str(r) for r in known_list(known(spec, "loadBalancerSourceRanges"))]
    if not ranges:
        annotation = known(known(known(props, "metadata"), "annotations"), LB_SOURCE_RANGES_ANNOTATION)
        ranges = [r for r in str(annotation or "").split(",") if r.strip()]
    if not ranges:
        report_violation(
            f"LoadBalancer Service {name} has no loadBalancerSourceRanges, so {ports} is open to 0.0.0.0/0. "
            f"Set spec.loadBalancerSourceRanges to the allowed client CIDRs",
            None,
        )
        return
    _check_cidrs(ranges, f"LoadBalancer Service {name} loadBalancerSourceRanges", ports, report_violation)


def _check_network_policy(props: Mapping[str, Any], name: str, report_violation: ReportViolation) -> None:
    rules = known_list(known(known(props, "spec"), "ingress"))
    for index, rule in enumerate(rules):
        ports = _ports(known(rule, "ports"))
        peers = known_list(known(rule, "from"))
        if not peers:
            report_violation(
                f"NetworkPolicy {name} ingress rule {index} has no `from`, so it admits {ports} from every "
                f"source including 0.0.0.0/0. Add ipBlock, podSelector or namespaceSelector peers",
                None,
            )
            continue
        cidrs = [str(known(known(peer, "ipBlock"), "cidr")) for peer in peers if known(known(peer, "ipBlock"), "cidr")]
        _check_cidrs(cidrs, f"NetworkPolicy {name} ingress rule {index} ipBlock", ports, report_violation)


def validate_no_public_ingress(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.get_config().get(ALLOW_PUBLIC, False) is True:
        return
    kind = kind_of(args.resource_type)
    name = display_name(args.props, args.name)
    if kind == "Service":
        _check_service(args.props, name, report_violation)
    elif kind == "NetworkPolicy":
        _check_network_policy(args.props, name, report_violation)


no_public_ingress = ResourceValidationPolicy(
    name="no-public-ingress",
    description="No Service or NetworkPolicy may open a port (18789 included) to 0.0.0.0/0 or ::/0 "
    "unless the stack is marked public.",
    validate=validate_no_public_ingress,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.CRITICAL,
    config_schema=PolicyConfigSchema(
        properties={
            ALLOW_PUBLIC: {
                "type": "boolean",
                "default": False,
                "description": "Set true only for a stack meant to serve the whole internet.",
            }
        }
    ),
    remediation_steps="Set the stack's allowed CIDRs (loadBalancerSourceRanges and the NetworkPolicy ipBlocks) "
    "to the client networks, or pass a policy config with allowPublicIngress: true for a public stack.",
)
