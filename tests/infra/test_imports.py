"""infra/'s imports follow its layers: nothing imports in a circle, settings never reach up into components, and the
program never depends on its tooling (infra/tools), which only the `python -m infra.synth` entry module may run."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
# The command the design names (`python -m infra.synth`): it starts the tool, and is itself tooling.
ENTRY_MODULES = {"infra.synth"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(INFRA.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The infra modules `name` imports anywhere in its body (functions and TYPE_CHECKING blocks included)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def test_every_infra_module_is_seen() -> None:
    assert {"infra.settings.loader", "infra.components.chat_service", "infra.tools.synth"} <= set(GRAPH)
    assert "infra.settings.values" in GRAPH["infra.settings.network"]


def test_no_import_cycle() -> None:
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            pytest.fail("import cycle: " + " -> ".join(path[path.index(name):] + [name]))
        if name in done:
            return
        for target in sorted(GRAPH[name]):
            visit(target, path + [name])
        done.add(name)

    for name in sorted(GRAPH):
        visit(name, [])


def test_the_program_never_imports_its_tooling() -> None:
    offenders = {name: sorted(t for t in targets if t.startswith("infra.tools"))
                 for name, targets in GRAPH.items()
                 if not name.startswith("infra.tools") and name not in ENTRY_MODULES}
    assert {k: v for k, v in offenders.items() if v} == {}
    main = {node.module for node in ast.walk(ast.parse((ROOT / "__main__.py").read_text()))
            if isinstance(node, ast.ImportFrom) and node.module}
    assert not {m for m in main if m.startswith("infra.tools")}


def test_settings_never_import_components() -> None:
    """Settings are the layer below: components read them, never the other way."""
    offenders = {name: sorted(t for t in targets if t.startswith("infra.components"))
                 for name, targets in GRAPH.items() if name.startswith("infra.settings")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_cycle_check_would_catch_a_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(GRAPH, "infra.settings.values", GRAPH["infra.settings.values"] | {"infra.settings.loader"})
    with pytest.raises(pytest.fail.Exception, match="import cycle: .*infra.settings.loader"):
        test_no_import_cycle()
