"""Tiers: every test gets one marker, from where it lives, so `scripts/test -m unit` is the quick loop.

- `image`: tests/image (builds the container with podman);
- `e2e`: tests/e2e (a real server process with the embedded model);
- `integration`: the modules in INTEGRATION, which start a real component (Redis, PostgreSQL, Prometheus,
  Alertmanager, a scanner or linter, the docs build, the policy pack's Node runtime, a grammar-compiling child
  process, the Pulumi program in a subprocess) or load a real model;
- `unit`: the rest, under 2 minutes together on two cores.

A test that names a tier itself keeps it. tests/test_tiers.py checks the list below names real files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).parent
TIERS = ("unit", "integration", "e2e", "image")
BY_FOLDER = {"e2e": "e2e", "image": "image"}
INTEGRATION = frozenset(
    {
        "app/access/test_concurrency.py",
        "app/access/test_keys_cli.py",
        "app/access/test_ratelimit.py",
        "app/api/test_event_loop.py",
        "app/api/test_hostile_input.py",
        "app/inference/test_constraints.py",
        "app/inference/test_gguf_models.py",
        "app/inference/test_lean_llama.py",
        "app/inference/test_model_loader.py",
        "app/storage/test_conversations_postgres.py",
        "app/storage/test_response_cache.py",
        "app/test_factory.py",
        "bench/test_gpu_check.py",
        "ci/test_deploy_steps.py",
        "ci/test_workflows.py",
        "docs/test_site.py",
        "infra/components/alerts/test_promtool.py",
        "infra/components/alerts/test_routing.py",
        "infra/components/test_backups.py",
        "infra/test_releases.py",
        "infra/test_scheduled_rotation.py",
        "policy/test_pack.py",
        "scan/test_checkov.py",
        "test_habits.py",
    }
)


def tier_of(path: Path) -> str:
    rel = path.relative_to(TESTS)
    if rel.parts[0] in BY_FOLDER:
        return BY_FOLDER[rel.parts[0]]
    return "integration" if rel.as_posix() in INTEGRATION else "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not any(item.get_closest_marker(t) for t in TIERS):
            item.add_marker(tier_of(Path(str(item.path))))
