"""infra/'s imports follow its layers: nothing imports in a circle, settings never reach up into components, and the
program never depends on its tooling (infra/tools), which only the `python -m infra.synth` entry module may run."""

from __future__ import annotations

import ast

import pytest

from tests.import_graph import ROOT, ImportGraph, discover

# The command the design names (`python -m infra.synth`): it starts the tool, and is itself tooling.
ENTRY_MODULES = {"infra.synth"}
INFRA = ImportGraph.of(discover("infra"))  # the modules found on disk, every import counted (tests/import_graph.py)
GRAPH = INFRA.edges


def test_every_infra_module_is_seen() -> None:
    assert {"infra.settings.loader", "infra.components.chat_service", "infra.tools.synth"} <= set(GRAPH)
    assert "infra.settings.values" in GRAPH["infra.settings.network"]


def test_no_import_cycle() -> None:
    cycles = INFRA.cycles()
    if cycles:
        pytest.fail("import cycle: " + "; ".join(" -> ".join(cycle) for cycle in cycles))


def test_the_program_never_imports_its_tooling() -> None:
    offenders = {
        name: sorted(t for t in targets if t.startswith("infra.tools"))
        for name, targets in GRAPH.items()
        if not name.startswith("infra.tools") and name not in ENTRY_MODULES
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    main = {
        node.module
        for node in ast.walk(ast.parse((ROOT / "__main__.py").read_text()))
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not {m for m in main if m.startswith("infra.tools")}


def test_settings_never_import_components() -> None:
    """Settings are the layer below: components read them, never the other way."""
    offenders = {
        name: sorted(t for t in targets if t.startswith("infra.components"))
        for name, targets in GRAPH.items()
        if name.startswith("infra.settings")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_cycle_check_would_catch_a_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(GRAPH, "infra.settings.values", GRAPH["infra.settings.values"] | {"infra.settings.loader"})
    with pytest.raises(pytest.fail.Exception, match="import cycle: .*infra.settings.loader"):
        test_no_import_cycle()
