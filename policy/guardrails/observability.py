"""Refuses a stack that would run the service with nobody alerted and nothing scaling it."""

from __future__ import annotations

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    Severity,
    StackValidationArgs,
    StackValidationPolicy,
)

from .kube import kind_of


def _has_kind(args: StackValidationArgs, kind: str) -> bool:
    return any(kind_of(r.resource_type) == kind for r in args.resources)


def validate_has_prometheus_rule(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    if not _has_kind(args, "PrometheusRule"):
        report_violation(
            "the stack declares no PrometheusRule (monitoring.coreos.com/v1), so no alert fires when the "
            "service is down, slow or out of capacity; keep the AlertRules component in the program",
            None,
        )


def validate_has_autoscaler(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    if not _has_kind(args, "HorizontalPodAutoscaler"):
        report_violation(
            "the stack declares no HorizontalPodAutoscaler, so the chat Deployment cannot grow under load; "
            "keep the Autoscaler component in the program",
            None,
        )


has_prometheus_rule = StackValidationPolicy(
    name="stack-has-prometheus-rule",
    description="The stack declares at least one PrometheusRule.",
    validate=validate_has_prometheus_rule,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.MEDIUM,
)

has_autoscaler = StackValidationPolicy(
    name="stack-has-autoscaler",
    description="The stack declares at least one HorizontalPodAutoscaler.",
    validate=validate_has_autoscaler,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.MEDIUM,
)
