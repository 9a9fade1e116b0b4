"""docs/api/limits.md's index of hostile-input classes names tests that exist: one per class, each still there."""

from __future__ import annotations

import ast
import re

from tests.docs.pages import ROOT, section

CLASSES = (
    "engine-killing",
    "Unicode",
    "bombs",
    "cannot enforce",
    "tool-call history",
    "Responses API item types",
    "hang-ups",
    "metrics port",
)
TEST_ID = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def test_every_hostile_input_class_names_tests_that_exist() -> None:
    rows = [
        line
        for line in section("api/limits.md", "Hostile input: one test per class").splitlines()
        if line.startswith("| ") and "`tests/" in line
    ]
    for name in CLASSES:
        assert any(name in row.split("|")[1] for row in rows), f"no row for {name!r}"
    for row in rows:
        ids = TEST_ID.findall(row)
        assert ids, row
        for path, test in ids:
            tree = ast.parse((ROOT / path).read_text())
            defined = {
                node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            }
            assert test in defined, f"{path} has no {test}"
