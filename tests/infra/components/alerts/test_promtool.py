"""promtool on the synthesized PrometheusRule: the rule file loads, and every alert fires at its threshold once its
window has passed and stays silent just below it, carrying the labels its route needs (namespace, severity,
service; key_id for a key)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.tools.synth import Synthesis
from tests.infra.components.alerts.cases import RULE_FILE, TEST_FILES, checks, firing_labels
from tests.infra.components.alerts.operator import rule_file
from tests.monitoring import run_tool, write_yaml


def rules_of(s: Synthesis) -> dict[str, dict[str, Any]]:
    (group,) = s.one("PrometheusRule").manifest["spec"]["groups"]
    return {r["alert"]: r for r in group["rules"]}


@pytest.fixture(scope="module")
def rules_dir(prod: Synthesis, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("promtool")
    write_yaml(d / RULE_FILE, rule_file(prod.one("PrometheusRule").manifest))
    return d


def test_the_rule_file_passes_promtool_check(rules_dir: Path, prod: Synthesis) -> None:
    run = run_tool("promtool", "check", "rules", str(rules_dir / RULE_FILE))
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(rules_of(prod))} rules found" in run.stdout


def test_promtool_check_refuses_a_broken_expression(tmp_path: Path, prod: Synthesis) -> None:
    doc = rule_file(prod.one("PrometheusRule").manifest)
    doc["groups"][0]["rules"][0]["expr"] = "sum by (namespace (rate(clawbot_requests_total[5m]))"
    run = run_tool("promtool", "check", "rules", str(write_yaml(tmp_path / RULE_FILE, doc)))
    assert run.returncode != 0 and "parse error" in run.stdout + run.stderr


@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
def test_alerts_fire_at_the_threshold_and_not_below(rules_dir: Path, test_file: Path, prod: Synthesis) -> None:
    # The runbook annotation is fixed text (no template), so it is filled in from the rule rather than copied
    # into every expected alert; the summary, which templates labels and values, is written out in the file.
    runbooks = {name: rule["annotations"]["runbook"] for name, rule in rules_of(prod).items()}
    doc = yaml.safe_load(test_file.read_text())
    for case in doc["tests"]:
        for check in case["alert_rule_test"]:
            for alert in check.get("exp_alerts") or []:
                alert.setdefault("exp_annotations", {})["runbook"] = runbooks[check["alertname"]]
    run = run_tool("promtool", "test", "rules", write_yaml(rules_dir / test_file.name, doc).name, cwd=rules_dir)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_alert_is_tested_firing_and_silent(prod: Synthesis) -> None:
    rules = rules_of(prod)
    fired = {label["alertname"] for label in firing_labels()}
    silent = {name for _, name, alerts in checks() if not alerts}
    assert fired == set(rules) and silent == set(rules)
    for labels in firing_labels():
        rule = rules[labels["alertname"]]
        assert labels["namespace"] == "clawbot", labels  # the AlertmanagerConfig's namespace: see test_routing
        assert labels["severity"] == rule["labels"]["severity"] and labels["service"] == "clawbot"
    assert all("key_id" in labels for labels in firing_labels() if labels["alertname"] == "ClawbotKeyAbuse")
