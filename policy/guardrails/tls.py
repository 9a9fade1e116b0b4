"""Refuses a production stack whose API port would carry API keys and tokens in plain text."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    Severity,
    StackValidationArgs,
    StackValidationPolicy,
)

from .kube import SERVICE_PORT, display_name, kind_of, known, known_items, known_list

ALLOW_PLAINTEXT = "allowPlaintext"
SSL_CERT = "service.beta.kubernetes.io/aws-load-balancer-ssl-cert"
SSL_PORTS = "service.beta.kubernetes.io/aws-load-balancer-ssl-ports"


def _tls_at_load_balancer(props: Mapping[str, Any]) -> bool:
    """An NLB TLS listener on the API port: a certificate, and ssl-ports absent (every port) or naming it."""
    spec = known(props, "spec")
    if known(spec, "type") != "LoadBalancer":
        return False
    annotations = dict(known_items(known(known(props, "metadata"), "annotations")))
    if not annotations.get(SSL_CERT):
        return False
    ports = [p.strip() for p in str(annotations.get(SSL_PORTS, "")).split(",") if p.strip()]
    names = {str(known(p, "name")) for p in known_list(known(spec, "ports")) if known(p, "port") == SERVICE_PORT}
    return not ports or str(SERVICE_PORT) in ports or bool(names & set(ports))


def _tls_at_gateway(props: Mapping[str, Any]) -> bool:
    """An HTTPRoute attached to one named listener of its Gateway: the program attaches a production route only to the
    listener the stack names as the Gateway's HTTPS one (gatewayListener), where TLS terminates as at an NLB's."""
    parents = known_list(known(known(props, "spec"), "parentRefs"))
    return bool(parents) and all(known(p, "sectionName") for p in parents)


def validate_encrypted_endpoint(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    if args.get_config().get(ALLOW_PLAINTEXT, False) is True:
        return
    production = []  # ConfigMaps of a production chat service; TLS_CERT_FILE there means TLS in the pod
    load_balancer_tls = False
    for r in args.resources:
        kind = kind_of(r.resource_type)
        if kind == "ConfigMap":
            data = dict(known_items(known(r.props, "data")))
            if data.get("APP_ENV") == "production":
                production.append((display_name(r.props, r.name), bool(data.get("TLS_CERT_FILE"))))
        elif kind == "Service":
            load_balancer_tls = load_balancer_tls or _tls_at_load_balancer(r.props)
        elif kind == "HTTPRoute":
            load_balancer_tls = load_balancer_tls or _tls_at_gateway(r.props)
    for name, pod_tls in production:
        if not (pod_tls or load_balancer_tls):
            report_violation(
                f"the production service configured by ConfigMap {name} serves port {SERVICE_PORT} without TLS: API keys "
                f"and JWTs would cross the network in plain text. Set the stack's tlsCertificateArn (TLS at the NLB), "
                f"gateway with gatewayListener (its HTTPS listener), or "
                f"podTlsIssuer/podTlsSecret (TLS in the pod), or pass the policy config {ALLOW_PLAINTEXT}: true on purpose",
                None,
            )


encrypted_endpoint = StackValidationPolicy(
    name="production-endpoint-uses-tls",
    description="A production chat service serves port 18789 over TLS, at the load balancer or in the pod.",
    validate=validate_encrypted_endpoint,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.HIGH,
    config_schema=PolicyConfigSchema(
        properties={
            ALLOW_PLAINTEXT: {
                "type": "boolean",
                "default": False,
                "description": "Set true only for a production stack meant to run without TLS.",
            }
        }
    ),
)
