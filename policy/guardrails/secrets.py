"""Refuses a stack where a Secret's value also appears in plain text: in a ConfigMap or a literal container env value."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass

from pulumi_policy import (
    EnforcementLevel,
    PolicyResource,
    ReportViolation,
    Severity,
    StackValidationArgs,
    StackValidationPolicy,
)

from .kube import (
    container_label,
    display_name,
    kind_of,
    known,
    known_items,
    known_list,
    workload,
)

# Shorter values ("true", "8080", "1") match ordinary config by coincidence; real credentials are longer.
MIN_SECRET_CHARS = 8


@dataclass(frozen=True)
class SecretValue:
    secret: str
    key: str
    value: str


def _decode(data: str) -> str | None:
    try:
        return base64.b64decode(data, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def secret_values(resources: list[PolicyResource]) -> list[SecretValue]:
    """Every known Secret value long enough to compare, from stringData and (base64) data."""
    out: list[SecretValue] = []
    for r in resources:
        if kind_of(r.resource_type) != "Secret":
            continue
        name = display_name(r.props, r.name)
        for key, value in known_items(known(r.props, "stringData")):
            if isinstance(value, str) and len(value) >= MIN_SECRET_CHARS:
                out.append(SecretValue(name, key, value))
        for key, raw in known_items(known(r.props, "data")):
            value = _decode(raw) if isinstance(raw, str) else None
            if value is not None and len(value) >= MIN_SECRET_CHARS:
                out.append(SecretValue(name, key, value))
    return out


def _plain_texts(resources: list[PolicyResource]) -> Iterator[tuple[PolicyResource, str, str]]:
    """(resource, where, text) for every ConfigMap value and literal env value in the stack."""
    for r in resources:
        kind = kind_of(r.resource_type)
        if kind == "ConfigMap":
            name = display_name(r.props, r.name)
            for key, value in known_items(known(r.props, "data")):
                if isinstance(value, str):
                    yield r, f"ConfigMap {name} key {key!r}", value
            continue
        w = workload(r.resource_type, r.props, r.name)
        if w is None:
            continue
        for c in w.containers():
            for env in known_list(known(c, "env")):
                value = known(env, "value")
                if isinstance(value, str):
                    yield r, f"{w.kind} {w.name} {container_label(c)} env {known(env, 'name')!r}", value


def validate_no_plaintext_secrets(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    secrets = secret_values(args.resources)
    if not secrets:
        return
    for resource, where, text in _plain_texts(args.resources):
        for s in secrets:
            if s.value in text:
                # Name the places, never the value: this message lands in CI logs and PR comments.
                report_violation(
                    f"{where} contains the value of Secret {s.secret} key {s.key!r}; mount the Secret or use "
                    f"env valueFrom.secretKeyRef instead of copying the value",
                    resource.urn,
                )


no_plaintext_secrets = StackValidationPolicy(
    name="no-secret-values-in-plain-config",
    description="No Secret value appears in a ConfigMap or a literal container env value.",
    validate=validate_no_plaintext_secrets,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.CRITICAL,
)
