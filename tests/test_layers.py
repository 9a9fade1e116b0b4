"""Imports point one way: app/'s layers never import upwards, the service never imports the Pulumi program, and
nothing in app/, infra/ or the root __main__.py imports in a circle (docs/architecture/request-flow.md, the design's
"Layers"). The modules are found on disk (tests/import_graph.py), so a new module is checked without being listed.

    entry points   app.__main__, app.factory, app.keys, app.load_model
    app.api        routes, serving, auth, middleware, schemas
    app.access  app.inference  app.storage     (may import each other, never in a circle)
    app.settings  app.observability
"""

from __future__ import annotations

import pytest

from tests.import_graph import ROOT, ImportGraph, discover

ENTRY_POINTS = ("app", "app.__main__", "app.factory", "app.keys", "app.load_model")
LAYERS: dict[str, int] = {
    **{name: 4 for name in ENTRY_POINTS},
    "app.api": 3,
    "app.access": 2,
    "app.inference": 2,
    "app.storage": 2,
    "app.settings": 1,
    "app.observability": 1,
}
# The Pulumi program may read what the service and the stack share (ports, env names, key sealing), never the
# service itself.
SERVICE = ("app.api", *ENTRY_POINTS[1:])

MODULES = discover("app", "infra")
MODULES["__main__"] = ROOT / "__main__.py"  # the Pulumi program's entry point
GRAPH = ImportGraph.of(MODULES)


def top(module: str) -> str:
    """The layer a module of app/ belongs to: its top-level package, or the entry point it is."""
    return module if module in ENTRY_POINTS else ".".join(module.split(".")[:2])


def is_in(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_graph_sees_every_layer_and_infra_as_found_on_disk() -> None:
    found_tops = {top(m) for m in MODULES if m.startswith("app")}
    assert found_tops <= set(LAYERS), f"place these in a layer in LAYERS: {sorted(found_tops - set(LAYERS))}"
    assert {"app.api.serving.runner", "app.inference.engine_core", "app.access.control"} <= set(GRAPH.edges)
    infra = {m for m in MODULES if m.startswith("infra.")}
    assert len(infra) >= 5 and all(GRAPH.edges[m] is not None for m in infra)
    assert "app.inference.request_queue" in GRAPH.edges["app.inference.engine"]  # edges resolve to modules


def test_app_never_imports_up_its_layers() -> None:
    upward = sorted(
        f"{source} -> {target}"
        for source, targets in GRAPH.edges.items()
        if source.startswith("app")
        for target in targets
        if target.startswith("app") and LAYERS[top(target)] > LAYERS[top(source)]
    )
    assert upward == []


def test_the_service_and_the_pulumi_program_stay_apart() -> None:
    into_infra = sorted(
        f"{s} -> {t}"
        for s, ts in GRAPH.edges.items()
        if s.startswith("app")
        for t in ts
        if t.startswith("infra") or t == "__main__"
    )
    into_service = sorted(
        f"{s} -> {t}" for s, ts in GRAPH.edges.items() if not s.startswith("app") for t in ts if is_in(t, SERVICE)
    )
    assert (into_infra, into_service) == ([], [])


def test_nothing_imports_in_a_circle() -> None:
    assert [" -> ".join(cycle) for cycle in GRAPH.cycles()] == []


def test_the_packages_of_one_layer_do_not_import_each_other_in_a_circle() -> None:
    """app.access may use app.storage (the Redis link), but then app.storage never uses app.access."""
    packages = {top(m) for m in MODULES if m.startswith("app")}
    edges = {
        p: {
            top(t)
            for m in MODULES
            if top(m) == p and m.startswith("app")
            for t in GRAPH.edges[m]
            if t.startswith("app") and top(t) != p
        }
        for p in packages
    }
    package_graph = ImportGraph(modules={p: ROOT for p in packages}, edges=edges)
    assert [" -> ".join(cycle) for cycle in package_graph.cycles()] == []


def test_routes_leave_running_a_request_to_the_serving_layer() -> None:
    """A route parses and formats: it never imports another route, the engine or the access checks; app.api.serving
    runs the request."""
    routes = [m for m in GRAPH.edges if m.startswith("app.api.routes.")]
    assert len(routes) >= 5
    reaching = sorted(
        f"{s} -> {t}"
        for s in routes
        for t in GRAPH.edges[s]
        if (t.startswith("app.api.routes.") and t != s) or is_in(t, ("app.inference", "app.access"))
    )
    assert reaching == []


@pytest.mark.parametrize(
    "source, target, check",
    [
        ("app.access.control", "app.api.errors", test_app_never_imports_up_its_layers),
        ("app.settings", "app.inference.engine", test_app_never_imports_up_its_layers),
        ("app.inference.handle", "app.inference.request_state", test_nothing_imports_in_a_circle),
        ("infra.settings", "__main__", test_nothing_imports_in_a_circle),
        (
            "app.storage.redis_link",
            "app.access.ratelimit",
            test_the_packages_of_one_layer_do_not_import_each_other_in_a_circle,
        ),
        ("app.inference.engine", "infra.settings", test_the_service_and_the_pulumi_program_stay_apart),
        (
            "app.api.routes.responses_api",
            "app.api.routes.openai_api",
            test_routes_leave_running_a_request_to_the_serving_layer,
        ),
        ("app.api.routes.openai_api", "app.inference.engine", test_routes_leave_running_a_request_to_the_serving_layer),
    ],
)
def test_each_check_catches_what_it_forbids(monkeypatch: pytest.MonkeyPatch, source: str, target: str, check) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(GRAPH.edges, source, GRAPH.edges[source] | {target})
    with pytest.raises(AssertionError):
        check()
