"""The one place tests read the docs from: a page, a section of it, the fenced blocks in it.

Tests that hold the docs to the code (the alert table, the runbooks, the OpenClaw config, the image tags, the
Kubernetes range) name a page and a heading here, so moving a section is one change to the test that reads it.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# Files outside docs/ that are read as pages too (by their name, not a docs/-relative path).
TOP_LEVEL = ("README.md", "CONTRIBUTING.md", "SECURITY.md", "CHANGELOG.md", "bench/README.md")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6}) +(.*?)\s*#*\s*$")


def page(name: str) -> str:
    """The text of a top-level file (`README.md`) or of `docs/<name>`."""
    path = ROOT / name if name in TOP_LEVEL else DOCS / name
    assert path.is_file(), f"no page {name} (looked for {path.relative_to(ROOT)})"
    return path.read_text()


def all_pages() -> dict[str, str]:
    """Every page a reader sees: the top-level files and every Markdown file under docs/, by name."""
    pages = {name: page(name) for name in TOP_LEVEL if (ROOT / name).is_file()}
    pages.update({str(p.relative_to(DOCS)): p.read_text() for p in sorted(DOCS.rglob("*.md"))})
    return pages


def headings(text: str) -> list[tuple[int, int, str]]:
    """(line index, level, title) of every Markdown heading, skipping fenced code (where `# ...` is a comment)."""
    found, fenced = [], False
    for i, line in enumerate(text.splitlines()):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (m := HEADING.match(line)):
            found.append((i, len(m.group(1)), m.group(2)))
    return found


def section(name: str, heading: str) -> str:
    """The section of a page under `heading` (exact title, any level), up to the next heading of its level or above."""
    text = page(name)
    lines = text.splitlines()
    marks = headings(text)
    starts = [(i, level) for i, level, title in marks if title == heading]
    assert len(starts) == 1, f"{name} has {len(starts)} headings {heading!r}; its headings: {[t for _, _, t in marks]}"
    start, level = starts[0]
    end = next((i for i, lvl, _ in marks if i > start and lvl <= level), len(lines))
    return "\n".join(lines[start + 1 : end])


def fenced_blocks(text: str, lang: str) -> list[str]:
    """The bodies of the fenced code blocks tagged `lang` in `text`, in order."""
    return re.findall(rf"^```{re.escape(lang)}\n(.*?)^```", text, re.S | re.M)
