"""The import graph of this repository's own Python packages, read from the source (nothing is imported).

Every import counts wherever it is written: at module level, inside a function (a lazy import), and under
`if TYPE_CHECKING:`; a type-only import is still a dependency of the code that names the type.
`from package import name` counts as an import of `package.name` when that is a module, else of `package`
(as grimp, import-linter's graph, counts it): the parent packages Python initializes on the way are not edges.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def discover(*packages: str, root: Path = ROOT) -> dict[str, Path]:
    """Every module of `packages` (directories under `root`), found on disk."""
    return {module_name(p, root): p for package in packages for p in sorted((root / package).rglob("*.py"))}


def imported_names(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Every dotted name `name` (the module at `path`) imports, relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return found


@dataclass
class ImportGraph:
    modules: dict[str, Path]
    edges: dict[str, set[str]]

    @classmethod
    def of(cls, modules: dict[str, Path]) -> ImportGraph:
        edges = {}
        for name, path in modules.items():
            targets = {_owner(t, modules) for t in imported_names(path, name, modules)}
            edges[name] = {t for t in targets if t is not None and t != name}
        return cls(modules, edges)

    def cycles(self) -> list[list[str]]:
        """One cycle (as a path that returns to its start) per strongly connected component of more than one module."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        components: list[set[str]] = []

        def connect(v: str) -> None:  # Tarjan's algorithm
            index[v] = low[v] = len(index)
            stack.append(v)
            on_stack.add(v)
            for w in sorted(self.edges[v]):
                if w not in index:
                    connect(w)
                    low[v] = min(low[v], low[w])
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                component = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.add(w)
                    if w == v:
                        break
                if len(component) > 1:
                    components.append(component)

        for v in sorted(self.edges):
            if v not in index:
                connect(v)
        return [self._cycle_in(component) for component in components]

    def _cycle_in(self, component: set[str]) -> list[str]:
        start = min(component)
        path, seen = [start], {start}
        while True:
            step = min(t for t in self.edges[path[-1]] if t in component)
            if step in seen:
                return path[path.index(step) :] + [step]
            path.append(step)
            seen.add(step)


def _owner(target: str, modules: dict[str, Path]) -> str | None:
    """The module of ours that `target` names (itself, or the longest prefix that is one), or None."""
    while target:
        if target in modules:
            return target
        target = target.rpartition(".")[0]
    return None
