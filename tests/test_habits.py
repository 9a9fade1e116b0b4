"""The habits CI keeps (pyproject.toml holds the configuration): ruff lint and format over the whole tree, and mypy
over app/, infra/, __main__.py and bench/, strict on the request path (app/access, app/api, app/inference)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import TESTS

ROOT = TESTS.parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_ruff_finds_nothing() -> None:
    r = run("ruff", "check", "--no-cache", ".")
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


def test_the_tree_is_ruff_formatted() -> None:
    r = run("ruff", "format", "--no-cache", "--check", ".")
    assert r.returncode == 0, "run `.venv/bin/ruff format .`:\n" + r.stdout[-4000:] + r.stderr[-2000:]


def test_mypy_finds_nothing() -> None:
    r = run("mypy", "--cache-dir", str(ROOT / "build" / "mypy-cache"), "app", "infra", "__main__.py", "bench")
    assert r.returncode == 0, r.stdout[-8000:] + r.stderr[-2000:]
