"""The stack keys that set a service setting take its bounds, choices and default from the service's declaration
(app/settings.py), so a stack can never hand the pods a value the service would refuse at start."""

from __future__ import annotations

import pytest

from app.settings import ENV_VARS, Settings, SettingsError, bounds_of, choices_of, default_of, load_settings
from infra.settings import CONFIG_KEYS, ConfigError, parse_settings
from infra.settings.keys import KEYS
from infra.tools.synth import read_stack_config

SERVICE_KEYS = [k for k in CONFIG_KEYS if k.setting]
# Where the stack narrows what the service accepts, and why: the pods' termination grace is derived from it.
NARROWED = {"shutdownGraceSeconds": (5, 600)}


def test_the_mirroring_keys_are_declared_as_such() -> None:
    assert {k.name for k in SERVICE_KEYS} >= {
        "environment",
        "modelPath",
        "quantization",
        "dtype",
        "prefixCacheTokens",
        "maxTokens",
        "maxBatchSize",
        "jwtTtlSeconds",
        "rateLimitPerKey",
        "shutdownGraceSeconds",
        "alertKeyRequestsPerMinute",
    }
    assert all(k.setting in ENV_VARS for k in SERVICE_KEYS)


@pytest.mark.parametrize("key", SERVICE_KEYS, ids=lambda k: k.name)
def test_a_service_key_has_the_settings_bounds_choices_and_default(key) -> None:  # type: ignore[no-untyped-def]
    field = Settings.model_fields[ENV_VARS[key.setting]]
    if key.type == "integer":
        lo, hi = bounds_of(key.setting)
        assert key.bounds == NARROWED.get(key.name, (lo, hi))
        assert lo <= key.bounds[0] <= key.bounds[1] <= hi
        assert f"({key.bounds[0]}..{key.bounds[1]})" in key.description
        assert key.default == default_of(key.setting) or default_of(key.setting) is None, key.name
    if field.annotation is not str and key.type == "string":
        assert key.choices == choices_of(key.setting)
    if key.name != "environment" and field.default is not None:  # a stack starts as development
        assert key.default == field.default


@pytest.mark.parametrize("key", [k for k in SERVICE_KEYS if k.bounds], ids=lambda k: k.name)
def test_the_stack_refuses_what_the_service_would_refuse_and_the_service_takes_what_the_stack_takes(key) -> None:  # type: ignore[no-untyped-def]
    lo, hi = key.bounds
    with pytest.raises(ConfigError, match=f"clawbot:{key.name} must be between {lo} and {hi}, got {hi + 1}"):
        parse_settings({**read_stack_config("prod"), key.name: hi + 1}, stack="prod")
    for value in (lo, hi):
        load_settings({"APP_ENV": "development", key.setting: str(value)})
    if key.name not in NARROWED:
        with pytest.raises(SettingsError):
            load_settings({"APP_ENV": "development", key.setting: str(hi + 1)})


def test_a_key_request_rate_the_service_refuses_no_longer_passes_preview() -> None:
    """alertKeyRequestsPerMinute is also ABNORMAL_KEY_PER_MINUTE: the stack once allowed 10x what the pods accept."""
    assert KEYS["alertKeyRequestsPerMinute"].bounds == bounds_of("ABNORMAL_KEY_PER_MINUTE") == (1, 1_000_000)
    with pytest.raises(ConfigError, match="alertKeyRequestsPerMinute must be between 1 and 1000000"):
        parse_settings({**read_stack_config("prod"), "alertKeyRequestsPerMinute": 5_000_000}, stack="prod")
