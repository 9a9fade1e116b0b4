"""The offline synth's command, `python -m infra.synth` (infra/synth.py runs infra/tools/synth.py): one file per
object, a summary, and no secret in either."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from infra.tools.synth import Synthesis

ROOT = Path(__file__).resolve().parents[3]


def test_cli_writes_one_file_per_object_a_summary_and_no_secret(tmp_path: Path, prod: Synthesis) -> None:
    out = tmp_path / "manifests"
    run = subprocess.run(
        [sys.executable, "-m", "infra.synth", "--stack", "prod", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads((out / "summary.json").read_text())
    files = sorted(p.name for p in out.glob("*.yaml"))
    assert files == sorted(o["file"] for o in summary["objects"]) and len(files) == len(prod.objects)
    assert (
        summary["outputs"]["apiKey"] == "[secret]"
        and summary["outputs"]["endpointUrl"] == "https://chat.example.com:18789"
    )
    everything = "".join(p.read_text() for p in out.iterdir())
    assert prod.outputs["apiKey"] not in everything
    assert prod.one("Secret", "clawbot-keys").manifest["stringData"]["keys.json"] not in everything
    keys_file = yaml.safe_load((out / "secret-clawbot-clawbot-keys.yaml").read_text())
    assert keys_file["stringData"] == {"keys.json": "<redacted>"}
    passfile = yaml.safe_load((out / "secret-clawbot-clawbot-database-backups-credentials.yaml").read_text())
    assert passfile["stringData"] == {"dsn": "<redacted>", "pgpass": "<redacted>"}
    assert "| Deployment | clawbot | clawbot |" in (out / "summary.md").read_text()


def test_cli_names_an_unknown_stack(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "infra.synth", "--stack", "staging", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "Pulumi.staging.yaml does not exist" in run.stderr
