"""The hand-written reference pages name what the code exports: every metric family is in the metrics page."""
from __future__ import annotations

import re

from app.observability.metrics import build_metrics
from tests.docs.pages import page


def test_every_exported_metric_is_documented() -> None:
    documented = set(re.findall(r"`(clawbot_\w+)`", page("reference/metrics.md")))
    exported = {f.name + ("_total" if f.type == "counter" else "") for f in build_metrics().registry.collect()}
    assert not exported - documented, f"docs/reference/metrics.md lacks {sorted(exported - documented)}"
    assert not documented - exported, f"docs/reference/metrics.md names metrics the service does not export: {sorted(documented - exported)}"
