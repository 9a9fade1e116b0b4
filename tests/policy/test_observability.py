"""stack-has-prometheus-rule and stack-has-autoscaler: a stack without alerts or an HPA stops the preview."""

from __future__ import annotations

from guardrails.observability import has_autoscaler, has_prometheus_rule

from .conftest import Violations, stack_args, stack_resource
from .objects import deployment

RULE = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PrometheusRule",
    "metadata": {"name": "clawbot"},
    "spec": {"groups": []},
}
HPA = {
    "metadata": {"name": "clawbot"},
    "spec": {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "clawbot"},
        "minReplicas": 2,
        "maxReplicas": 10,
    },
}


def run_both(*kinds_and_props: tuple[str, dict]) -> tuple[Violations, Violations]:
    args = stack_args(*(stack_resource(kind, props, name=f"r{i}") for i, (kind, props) in enumerate(kinds_and_props)))
    rules, hpas = Violations(), Violations()
    has_prometheus_rule.validate(args, rules)
    has_autoscaler.validate(args, hpas)
    return rules, hpas


def test_stack_with_rule_and_hpa_passes() -> None:
    assert run_both(("Deployment", deployment()), ("PrometheusRule", RULE), ("HorizontalPodAutoscaler", HPA)) == (
        [],
        [],
    )


def test_stack_without_prometheus_rule_fails() -> None:
    rules, hpas = run_both(("Deployment", deployment()), ("HorizontalPodAutoscaler", HPA))
    assert len(rules) == 1 and "PrometheusRule" in rules.messages[0] and hpas == []


def test_stack_without_hpa_fails() -> None:
    rules, hpas = run_both(("Deployment", deployment()), ("PrometheusRule", RULE))
    assert rules == [] and len(hpas) == 1 and "HorizontalPodAutoscaler" in hpas.messages[0]
