"""The pack as the Pulumi CLI loads it: every policy mandatory, uniquely named, and the manifest valid."""

from __future__ import annotations

import yaml
from guardrails import POLICIES
from pulumi_policy import EnforcementLevel, StackValidationPolicy

from .conftest import POLICY_DIR


def test_every_policy_is_mandatory_and_uniquely_named() -> None:
    names = [p.name for p in POLICIES]
    assert len(names) == len(set(names))
    assert all(p.enforcement_level is EnforcementLevel.MANDATORY for p in POLICIES)


def test_pack_covers_each_guardrail_of_the_issue() -> None:
    names = {p.name for p in POLICIES}
    assert {
        "no-public-ingress",
        "containers-run-as-non-root",
        "containers-unprivileged",
        "containers-have-limits",
        "gpu-pods-tolerate-and-limit",
        "chat-deployment-has-readiness-probe",
        "no-secret-values-in-plain-config",
        "stack-has-prometheus-rule",
        "stack-has-autoscaler",
        "production-endpoint-uses-tls",
    } <= names
    assert {p.name for p in POLICIES if isinstance(p, StackValidationPolicy)} == {
        "no-secret-values-in-plain-config",
        "stack-has-prometheus-rule",
        "stack-has-autoscaler",
        "production-endpoint-uses-tls",
        "canary-weight-within-ceiling",
    }


def test_pulumi_policy_manifest_and_requirements() -> None:
    manifest = yaml.safe_load((POLICY_DIR / "PulumiPolicy.yaml").read_text())
    assert manifest["runtime"]["name"] == "python" and manifest["version"]
    requirements = (POLICY_DIR / "requirements.txt").read_text()
    assert "pulumi-policy==1.21.0" in requirements
    main = (POLICY_DIR / "__main__.py").read_text()
    assert "PolicyPack(" in main and "POLICIES" in main


def test_pack_starts_as_the_policy_host_runs_it() -> None:
    # The Pulumi policy host does runpy.run_path(<pack dir>); the pack then serves gRPC and prints its port.
    import subprocess
    import sys

    code = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(POLICY_DIR)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first_line = proc.stdout.readline().strip()
        error = proc.stderr.read() if proc.poll() is not None else ""
        assert first_line.isdigit(), f"pack did not start: {first_line!r} {error}"
    finally:
        proc.kill()
        proc.wait(10)
