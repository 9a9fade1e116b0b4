"""The tier list in tests/conftest.py names test modules that exist, and every test lands in exactly one tier."""

from __future__ import annotations

from tests.conftest import INTEGRATION, TESTS, TIERS, tier_of


def test_every_integration_module_exists() -> None:
    missing = sorted(p for p in INTEGRATION if not (TESTS / p).is_file())
    assert not missing, f"tests/conftest.py lists modules that are gone: {missing}"


def test_each_test_module_has_one_tier() -> None:
    tiers = {p.relative_to(TESTS).as_posix(): tier_of(p) for p in TESTS.rglob("test_*.py")}
    assert set(tiers.values()) <= set(TIERS)
    assert tiers["e2e/test_lifecycle.py"] == "e2e" and tiers["image/test_image.py"] == "image"
    assert tiers["scan/test_checkov.py"] == "integration" and tiers["test_tiers.py"] == "unit"
