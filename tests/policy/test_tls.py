"""production-endpoint-uses-tls: a production chat service without TLS at the NLB or in the pod stops the preview."""

from __future__ import annotations

from typing import Any

from guardrails.tls import encrypted_endpoint
from pulumi_policy import StackValidationArgs

from .conftest import Violations, stack_resource

ARN = "arn:aws:acm:us-east-1:123456789012:certificate/00000000-0000-4000-8000-000000000000"


def config_map(env: str = "production", **data: str) -> dict[str, Any]:
    return {"metadata": {"name": "clawbot-config", "namespace": "clawbot"}, "data": {"APP_ENV": env, **data}}


def service(annotations: dict[str, str] | None = None, kind: str = "LoadBalancer") -> dict[str, Any]:
    return {
        "metadata": {"name": "clawbot", "namespace": "clawbot", "annotations": annotations or {}},
        "spec": {"type": kind, "ports": [{"name": "http", "port": 18789}]},
    }


def check(*objects: tuple[str, dict[str, Any]], config: dict[str, Any] | None = None) -> Violations:
    v = Violations()
    args = StackValidationArgs(
        [stack_resource(kind, props, name=f"r{i}") for i, (kind, props) in enumerate(objects)], config
    )
    encrypted_endpoint.validate(args, v)
    return v


def test_tls_at_the_nlb_on_the_api_port_passes() -> None:
    annotations = {
        "service.beta.kubernetes.io/aws-load-balancer-ssl-cert": ARN,
        "service.beta.kubernetes.io/aws-load-balancer-ssl-ports": "18789",
    }
    assert check(("ConfigMap", config_map()), ("Service", service(annotations))) == []
    by_name = {**annotations, "service.beta.kubernetes.io/aws-load-balancer-ssl-ports": "http"}
    assert check(("ConfigMap", config_map()), ("Service", service(by_name))) == []


def test_tls_in_the_pod_passes() -> None:
    assert (
        check(
            ("ConfigMap", config_map(TLS_CERT_FILE="/var/run/clawbot/tls/tls.crt")),
            ("Service", service(kind="ClusterIP")),
        )
        == []
    )


def test_plaintext_production_fails_naming_the_fix() -> None:
    v = check(("ConfigMap", config_map()), ("Service", service()))
    assert len(v) == 1 and "clawbot/clawbot-config" in v.messages[0] and "tlsCertificateArn" in v.messages[0]
    wrong_port = {
        "service.beta.kubernetes.io/aws-load-balancer-ssl-cert": ARN,
        "service.beta.kubernetes.io/aws-load-balancer-ssl-ports": "443",
    }
    assert check(("ConfigMap", config_map()), ("Service", service(wrong_port))) != []


def test_development_and_plaintext_on_purpose_pass() -> None:
    assert check(("ConfigMap", config_map("development")), ("Service", service(kind="ClusterIP"))) == []
    assert check(("ConfigMap", config_map()), ("Service", service()), config={"allowPlaintext": True}) == []


def test_a_route_on_a_named_gateway_listener_counts_as_tls_at_the_gateway() -> None:
    def route(parent: dict[str, str]) -> tuple[str, dict[str, Any]]:
        return (
            "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute",
            {"metadata": {"name": "clawbot"}, "spec": {"parentRefs": [{"kind": "Gateway", "name": "gw", **parent}]}},
        )

    assert (
        check(("ConfigMap", config_map()), ("Service", service(kind="ClusterIP")), route({"sectionName": "https"}))
        == []
    )
    # A route on every listener of the Gateway may be served by a plain HTTP one.
    v = check(("ConfigMap", config_map()), ("Service", service(kind="ClusterIP")), route({}))
    assert len(v) == 1 and "gatewayListener" in v.messages[0]
