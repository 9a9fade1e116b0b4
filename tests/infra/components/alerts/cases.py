"""The promtool unit-test files of this folder (`*.test.yaml`), read as data: which alerts fire, with which labels."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULE_FILE = "clawbot.rules.yaml"  # the name every test file's rule_files refers to
TEST_FILES = sorted(HERE.glob("*.test.yaml"))


def checks() -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
    """(test name, alertname, expected alerts) for every alert_rule_test in every file."""
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case["alert_rule_test"]:
                yield case["name"], check["alertname"], check.get("exp_alerts") or []


def firing_labels() -> list[dict[str, str]]:
    """The full label set of every alert a test expects to fire, alertname included."""
    return [{"alertname": name, **alert["exp_labels"]} for _, name, alerts in checks() for alert in alerts]
