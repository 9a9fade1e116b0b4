"""The hand-written reference pages name what the code exports: every metric family is in the metrics page."""

from __future__ import annotations

import re

from app.observability.metrics import build_metrics
from tests.docs.pages import page


def test_every_exported_metric_is_documented() -> None:
    documented = set(re.findall(r"`(clawbot_\w+)`", page("reference/metrics.md")))
    exported = {f.name + ("_total" if f.type == "counter" else "") for f in build_metrics().registry.collect()}
    assert not exported - documented, f"docs/reference/metrics.md lacks {sorted(exported - documented)}"
    assert not documented - exported, (
        f"docs/reference/metrics.md names metrics the service does not export: {sorted(documented - exported)}"
    )


def test_both_generated_tables_are_current_and_go_stale_when_a_declaration_changes(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The same check `scripts/gen-docs --check` makes (tests/docs/test_site.py runs it), shown to catch a change on
    each side: a service setting's description and a stack key's."""
    import dataclasses

    from app.settings import Settings
    from docs import gen_reference
    from infra.settings import keys

    assert set(gen_reference.PAGES) == {"service-settings.md", "stack-config.md"}
    current = {name: render() for name, render in gen_reference.PAGES.items()}
    for name, text in current.items():
        assert page(f"reference/{name}") == text, f"docs/reference/{name} is stale; run scripts/gen-docs"
    assert "| `MAX_TOKENS` | none | 1..8192 |" in current["service-settings.md"]
    assert "`QUANTIZATION` | `auto` | `auto`, `gguf`, `nf4`, `int8`, `none` |" in current["service-settings.md"]

    monkeypatch.setattr(Settings.model_fields["max_tokens"], "description", "changed")
    first = keys.CONFIG_KEYS[0]
    monkeypatch.setattr(keys, "CONFIG_KEYS", (dataclasses.replace(first, description="changed"), *keys.CONFIG_KEYS[1:]))
    for name, render in gen_reference.PAGES.items():
        assert render() != current[name], name
