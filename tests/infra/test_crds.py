"""Every custom resource the program emits validates against its upstream CRD, vendored with its source and version."""

from __future__ import annotations

import copy
import hashlib

import pytest

from infra.tools.synth import Synthesis, synthesize
from tests.infra.conftest import BEHIND_GATEWAY, NEXT_IMAGE
from tests.infra.crd_validation import CRD_DIR, Report, crd_for, load_crds, validate

# Stacks that between them emit every kind the program can: prod and dev as checked in, TLS in the pod from a
# cert-manager issuer, and Karpenter with an EC2NodeClass that already exists.
VARIANTS = {
    "prod": ("prod", {}),
    "dev": ("dev", {}),
    "prod-pod-tls": ("prod", {"podTlsIssuer": "ClusterIssuer/clawbot-ca"}),
    "prod-private-ca": ("prod", {"podTlsIssuer": "private-ca"}),
    "prod-existing-nodeclass": ("prod", {"nodeClassName": "gpu-nodes"}),
    # Behind a Gateway, with a canary: the HTTPRoute and its weights (Gateway API, standard channel).
    "prod-gateway-canary": ("prod", {**BEHIND_GATEWAY, "canary": {"image": NEXT_IMAGE}}),
    "prod-cilium": ("prod", {"ciliumPolicies": True, "modelHubEgressCidrs": []}),
}
EMITTED_KINDS = {
    "NodePool",
    "EC2NodeClass",
    "PrometheusRule",
    "ServiceMonitor",
    "AlertmanagerConfig",
    "Certificate",
    "Issuer",
    "CiliumNetworkPolicy",
    "HTTPRoute",
}
BUILTIN_GROUPS = {"v1", "apps", "policy", "autoscaling", "networking.k8s.io", "batch", "rbac.authorization.k8s.io"}


@pytest.fixture(scope="module")
def syntheses(prod: Synthesis, dev: Synthesis) -> dict[str, Synthesis]:
    out = {"prod": prod, "dev": dev}
    for name, (stack, overrides) in VARIANTS.items():
        if overrides:
            out[name] = synthesize(stack, overrides=overrides)
    return out


def test_vendored_crds_are_the_upstream_files_named_in_source() -> None:
    for source in sorted(CRD_DIR.glob("*/SOURCE")):
        text = source.read_text()
        assert "repository: https://github.com/" in text and "tag: v" in text and "commit: " in text
        listed = [line.split() for line in text.splitlines() if line.startswith("  ")]
        assert listed, f"{source} lists no files"
        for name, digest in listed:
            assert hashlib.sha256((source.parent / name).read_bytes()).hexdigest() == digest, (
                f"{source.parent / name} was edited"
            )
    kinds = {kind for _, kind in load_crds()}
    assert EMITTED_KINDS <= kinds


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_custom_resource_validates_against_its_upstream_crd(
    variant: str, syntheses: dict[str, Synthesis], crd_report: Report
) -> None:
    s = syntheses[variant]
    objects = [o.manifest for o in s.objects if o.kind in EMITTED_KINDS]
    report = Report()
    for manifest in objects:
        validate(manifest, report)
    crd_report.rules_run += report.rules_run
    crd_report.update_only += report.update_only
    crd_report.skipped += report.skipped
    assert report.errors == [], f"{variant}: the API server would refuse:\n" + "\n".join(report.errors)


def test_the_variants_cover_every_custom_kind_the_program_emits(syntheses: dict[str, Synthesis]) -> None:
    custom = {
        (o.api_version, o.kind)
        for s in syntheses.values()
        for o in s.objects
        if o.api_version.split("/")[0] not in BUILTIN_GROUPS
    }
    assert {kind for _, kind in custom} == EMITTED_KINDS
    for api_version, kind in custom:
        assert crd_for({"apiVersion": api_version, "kind": kind}) is not None, (
            f"{kind} {api_version} has no vendored CRD"
        )


def test_cel_rules_ran_and_none_was_skipped_silently(syntheses: dict[str, Synthesis]) -> None:
    report = Report()
    for s in syntheses.values():
        for o in s.objects:
            if o.kind in ("NodePool", "EC2NodeClass"):
                validate(o.manifest, report)
    assert report.rules_run >= 50  # Karpenter's CRDs carry dozens of rules on the fields we set
    # Every rule on a present field was run, held to an update-only rule (oldSelf), or listed as skipped.
    assert all(r.reason for r in report.skipped + report.update_only)


def mutated(s: Synthesis, kind: str, change) -> dict:  # type: ignore[no-untyped-def]
    manifest = copy.deepcopy(s.one(kind).manifest)
    change(manifest)
    return manifest


def test_an_unknown_field_is_an_error(prod: Synthesis) -> None:
    def add(m: dict) -> None:
        m["spec"]["template"]["spec"]["expireAfterr"] = "720h"

    errors = validate(mutated(prod, "NodePool", add)).errors
    assert any("'expireAfterr' was unexpected" in e for e in errors), errors

    def alert_field(m: dict) -> None:
        m["spec"]["groups"][0]["rules"][0]["severity"] = "critical"

    assert any("'severity' was unexpected" in e for e in validate(mutated(prod, "PrometheusRule", alert_field)).errors)


def test_a_failing_cel_rule_is_an_error(prod: Synthesis) -> None:
    def both_role_and_profile(m: dict) -> None:
        m["spec"]["instanceProfile"] = "KarpenterNodeInstanceProfile"

    errors = validate(mutated(prod, "EC2NodeClass", both_role_and_profile)).errors
    assert any("must specify exactly one of ['role', 'instanceProfile']" in e for e in errors), errors

    def restricted_label(m: dict) -> None:
        m["spec"]["template"]["metadata"]["labels"]["karpenter.sh/nodepool"] = "x"

    errors = validate(mutated(prod, "NodePool", restricted_label)).errors
    assert any("restricted" in e for e in errors), errors


def test_the_http_route_is_held_to_the_gateway_api_crd(syntheses: dict[str, Synthesis]) -> None:
    route = syntheses["prod-gateway-canary"].one("HTTPRoute").manifest
    report = validate(route)
    assert report.errors == [] and report.rules_run >= 5  # the route's CEL rules (parentRefs, matches, filters) ran

    def weight(m: dict) -> None:
        m["spec"]["rules"][0]["backendRefs"][1]["weight"] = -1

    assert any("-1 is less than the minimum of 0" in e for e in validate(mutated_manifest(route, weight)).errors)

    def path(m: dict) -> None:
        m["spec"]["rules"][0]["matches"][0]["path"]["value"] = "chat"

    errors = validate(mutated_manifest(route, path)).errors
    assert any("must be an absolute path" in e for e in errors), errors


def mutated_manifest(manifest: dict, change) -> dict:  # type: ignore[no-untyped-def]
    out = copy.deepcopy(manifest)
    change(out)
    return out


def test_a_wrong_enum_or_scope_is_an_error(prod: Synthesis) -> None:
    def policy(m: dict) -> None:
        m["spec"]["disruption"]["consolidationPolicy"] = "Eventually"

    assert any("'Eventually' is not one of" in e for e in validate(mutated(prod, "NodePool", policy)).errors)

    def namespaced(m: dict) -> None:
        m["metadata"]["namespace"] = "clawbot"

    assert any("cluster-scoped" in e for e in validate(mutated(prod, "NodePool", namespaced)).errors)
