"""The docs site builds strict and offline, its generated reference matches the code, and the README stays the
front door: the two commands first, short, every link resolving."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.docs.pages import ROOT, TOP_LEVEL, page

README_MAX_LINES = 150
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_site_builds_strict_and_offline(tmp_path: Path) -> None:
    # A dead proxy: a theme or plugin that fetched anything while building would fail the build.
    env = {
        **os.environ,
        "NO_MKDOCS_2_WARNING": "1",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    site = tmp_path / "site"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(site),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert (site / "index.html").is_file() and (site / "reference" / "service-settings" / "index.html").is_file()
    assert not (site / "gen_reference.py").exists(), "the generator is not a page"
    # The snippets (CONTRIBUTING.md and friends) were pulled in, not left as markers.
    contributing = (site / "contributing" / "index.html").read_text()
    assert "Adding a setting" in contributing and "--8&lt;--" not in contributing


def test_the_generated_reference_is_up_to_date() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_reference.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr


def test_the_readme_starts_with_the_two_commands_and_stays_short() -> None:
    lines = page("README.md").splitlines()
    assert lines[0] == "# ClawBot"
    block = lines[lines.index("```bash") + 1 :]
    block = block[: block.index("```")]
    assert [line.split()[0] for line in block] == ["scripts/run", "scripts/test"], block
    assert lines.index("```bash") <= 3, "the two commands come right after the title"
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; the rest belongs under docs/"


def test_links_in_the_top_level_pages_resolve() -> None:
    broken = []
    for name in TOP_LEVEL:
        base = (ROOT / name).parent
        for target in LINK.findall(page(name)):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (base / target.split("#", 1)[0]).exists():
                broken.append(f"{name}: {target}")
    assert not broken, broken
