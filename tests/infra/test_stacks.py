"""Both stacks end to end: kubernetes-validate on the built-in kinds, CRD essentials, one namespace."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest

from infra.settings import parse_settings
from infra.settings.cluster import MIN_KUBERNETES
from infra.tools.synth import Synthesis, synthesize
from tests.docs.pages import all_pages, section

ROOT = Path(__file__).resolve().parents[2]
OLDEST = f"{MIN_KUBERNETES[0]}.{MIN_KUBERNETES[1]}.0"  # the oldest the docs support
NEWEST = kubernetes_validate.latest_version()  # the newest kubernetes-validate knows
K8S_VERSION = NEWEST
CRD_KINDS = {"NodePool", "EC2NodeClass", "ServiceMonitor", "PrometheusRule", "AlertmanagerConfig", "Certificate"}


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_builtin_kinds_validate_strictly_at_the_oldest_and_newest_kubernetes(
    stack: str, version: str, request: pytest.FixtureRequest
) -> None:
    s: Synthesis = request.getfixturevalue(stack)
    assert s.objects
    major, minor = parse_settings(s.config, stack=stack).kubernetes_version
    for v in {version, f"{major}.{minor}.0"}:  # and the version the stack says its cluster runs
        for obj in s.objects:
            if obj.kind in CRD_KINDS:
                continue
            kubernetes_validate.validate(obj.manifest, v, strict=True)


def test_pod_tls_variant_validates_too() -> None:
    s = synthesize("prod", overrides={"podTlsIssuer": "ClusterIssuer/clawbot-ca"})
    for obj in s.objects:
        if obj.kind not in CRD_KINDS:
            for v in (OLDEST, NEWEST):
                kubernetes_validate.validate(obj.manifest, v, strict=True)


def test_the_docs_state_the_supported_kubernetes_range_the_code_enforces() -> None:
    minimum = f"{MIN_KUBERNETES[0]}.{MIN_KUBERNETES[1]}"
    assert f"Kubernetes {minimum} or newer" in section("deploying/eks.md", "Prerequisites")
    stale = [name for name, text in all_pages().items() if "1.29+" in text]
    assert not stale, f"pages still name Kubernetes 1.29+: {stale}"


def test_validation_would_catch_a_broken_manifest(prod: Synthesis) -> None:
    broken = json.loads(json.dumps(prod.one("Deployment", "clawbot").manifest))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eighteen"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_crd_objects_carry_their_essential_fields(prod: Synthesis) -> None:
    found = {o.kind: o.manifest for o in prod.objects if o.kind in CRD_KINDS}
    assert set(found) == CRD_KINDS - {"Certificate"}  # prod terminates TLS at the NLB, no cert-manager
    assert found["NodePool"]["apiVersion"] == "karpenter.sh/v1"
    assert {"template", "limits", "disruption"} <= set(found["NodePool"]["spec"])
    assert found["EC2NodeClass"]["apiVersion"] == "karpenter.k8s.aws/v1"
    assert {"role", "amiSelectorTerms", "subnetSelectorTerms", "securityGroupSelectorTerms"} <= set(
        found["EC2NodeClass"]["spec"]
    )
    assert found["ServiceMonitor"]["apiVersion"] == found["PrometheusRule"]["apiVersion"] == "monitoring.coreos.com/v1"
    for rule in found["PrometheusRule"]["spec"]["groups"][0]["rules"]:
        assert {"alert", "expr", "for", "labels", "annotations"} <= set(rule)


def test_every_namespaced_object_lives_in_the_stack_namespace(prod: Synthesis) -> None:
    for obj in prod.objects:
        if obj.kind in ("Namespace", "NodePool", "EC2NodeClass"):
            assert obj.namespace is None
        elif obj.kind == "DaemonSet":
            assert obj.namespace == "kube-system"
        else:
            assert obj.namespace == "clawbot", obj.file_name
