"""checkov over the manifests both stacks would apply: any failed check not in checkov-skips.yaml fails the build."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.tools.synth import synthesize, write

ROOT = Path(__file__).resolve().parents[2]
CHECKOV = ROOT / ".venv-scan" / "bin" / "checkov"
SKIP_FILE = Path(__file__).with_name("checkov-skips.yaml")
STACKS = ("dev", "prod")
# Scanned in the same checkov run as the stacks: proof that the scan as configured catches a privileged root pod.
CANARY = "canary"
CANARY_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "bad", "namespace": "clawbot"},
    "spec": {
        "containers": [
            {
                "name": "c",
                "image": "busybox@sha256:" + "0" * 64,
                "securityContext": {"privileged": True, "runAsUser": 0},
            }
        ]
    },
}


@dataclass(frozen=True)
class Finding:
    stack: str
    check_id: str
    check_name: str
    resource: str
    file: str

    def __str__(self) -> str:
        return f"[{self.stack}] {self.check_id} {self.resource} ({self.file}): {self.check_name}"


@dataclass(frozen=True)
class Scan:
    report: dict[str, Any]
    findings: list[Finding]  # the stacks'
    canary: list[Finding]


@dataclass(frozen=True)
class Skip:
    check: str
    resources: tuple[str, ...]
    reason: str

    def covers(self, f: Finding) -> bool:
        return f.check_id == self.check and any(fnmatch.fnmatchcase(f.resource, p) for p in self.resources)


def load_skips() -> list[Skip]:
    doc = yaml.safe_load(SKIP_FILE.read_text()) or {}
    return [Skip(e["check"], tuple(e.get("resources") or ["*"]), str(e.get("reason", ""))) for e in doc["skips"]]


def checkov(directory: Path) -> dict[str, Any]:
    if not CHECKOV.exists():
        pytest.fail("checkov is not installed in its own virtualenv (.venv-scan); run: scripts/setup dev")
    # Offline: no call home for guideline mappings, no policy download.
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    # One directory per run: with several -d checkov prints one JSON document per directory.
    args = [str(CHECKOV), "-d", str(directory), "--framework", "kubernetes", "-o", "json", "--quiet", "--skip-download"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    # checkov exits 1 when a check fails; anything else that is not 0 is a crash.
    assert result.returncode in (0, 1), result.stderr[-4000:]
    report = json.loads(result.stdout)
    if isinstance(report, list):  # one report per framework when more than one ran
        report = next(r for r in report if r.get("check_type") == "kubernetes")
    return dict(report)


def findings_of(report: dict[str, Any], stack_of: dict[Path, str]) -> list[Finding]:
    out = []
    for c in report.get("results", {}).get("failed_checks", []):
        path = Path(c["file_abs_path"])
        stack = next((s for d, s in stack_of.items() if d in path.parents), "?")
        out.append(Finding(stack, c["check_id"], c["check_name"], c["resource"], path.name))
    return out


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Scan:
    """One checkov run over what infra.synth writes for each stack (base/<stack>/) and the canary (base/canary/)."""
    base = tmp_path_factory.mktemp("manifests")
    for stack in STACKS:
        target = base / stack
        write(synthesize(stack), target)
        assert list(target.rglob("*.y*ml")), f"infra.synth --stack {stack} wrote no manifests"
    (base / CANARY).mkdir()
    (base / CANARY / "pod.yaml").write_text(yaml.safe_dump(CANARY_POD))
    report = checkov(base)
    findings = findings_of(report, {(base / d).resolve(): d for d in (*STACKS, CANARY)})
    return Scan(report, [f for f in findings if f.stack != CANARY], [f for f in findings if f.stack == CANARY])


def test_skip_file_entries_name_a_check_and_give_a_one_line_reason() -> None:
    for s in load_skips():
        assert re.fullmatch(r"CKV2?_K8S_\d+", s.check), f"{s.check!r} is not a checkov Kubernetes check id"
        assert s.reason.strip() and "\n" not in s.reason.strip(), f"{s.check} needs a one-line reason"


def test_checkov_reads_every_workload_of_both_stacks(scan: Scan) -> None:
    summary = scan.report["summary"]
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] > 0 and summary["passed"] > 0


def test_no_failed_check_outside_the_skip_file(scan: Scan) -> None:
    findings = scan.findings
    skips = load_skips()
    new = sorted({str(f) for f in findings if not any(s.covers(f) for s in skips)})
    assert not new, "checkov findings not in tests/scan/checkov-skips.yaml:\n" + "\n".join(new)


def test_every_skip_still_matches_a_finding(scan: Scan) -> None:
    findings = scan.findings
    stale = [f"{s.check} {s.resources}" for s in load_skips() if not any(s.covers(f) for f in findings)]
    assert not stale, f"skips that match nothing any more, remove them: {stale}"


def test_a_privileged_root_pod_would_be_caught(scan: Scan) -> None:
    findings = scan.canary
    skips = load_skips()
    caught = {f.check_id for f in findings if not any(s.covers(f) for s in skips)}
    assert "CKV_K8S_16" in caught  # "Container should not be privileged"
