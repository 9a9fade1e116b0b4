"""The service's settings, declared once (app/settings.py): every field names its variable, default, bounds and
meaning; load_settings reads the environment with errors that name the variable and the value, never a secret's."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from app.settings import ENV_VARS, SECRET_FIELDS, Settings, SettingsError, bounds_of, choices_of, load_settings

DEV = {"APP_ENV": "development"}
SECRET = "hunter2-Pa55word"


def refusal(**env: str) -> str:
    with pytest.raises(SettingsError) as err:
        load_settings({**DEV, **env})
    return str(err.value)


def test_every_field_declares_its_variable_and_meaning_and_every_number_its_bounds() -> None:
    assert len(ENV_VARS) == len(Settings.model_fields) == 54
    for variable, name in ENV_VARS.items():
        spec = Settings.model_fields[name]
        assert variable.isupper() and spec.description, name
        if spec.annotation in (int, float):
            lo, hi = bounds_of(name)
            assert lo <= spec.default <= hi, name
    assert SECRET_FIELDS == {"dev_api_key", "redis_url", "conversation_database_url"}


def test_defaults_and_the_environment_forms_are_those_the_service_always_read(tmp_path: Path) -> None:
    s = load_settings(DEV)
    assert (s.port, s.metrics_port, s.max_tokens, s.max_batch_size, s.quantization, s.data_dir) == (
        18789,
        9464,
        None,
        32,
        "auto",
        Path("/app/data"),
    )  # None: the model's own cap
    assert (s.jwt_ttl_s, s.generation_timeout_s, s.warmup_prompts, s.allowed_cidrs) == (3600, 120.0, ("Hello!",), ())
    s = load_settings(
        {
            **DEV,
            "JWT_TTL_SECONDS": "60",
            "ALLOWED_CIDRS": "10.1.2.3/8, ,2001:db8::1/32",
            "WARMUP_PROMPTS": "Hi| |there",
            "MAX_TOKENS": "",
            "DATA_DIR": str(tmp_path),
            "DEV_API_KEY": SECRET,
            "UNRELATED": "x",
        }
    )
    assert (s.jwt_ttl_s, s.allowed_cidrs, s.warmup_prompts, s.max_tokens, s.data_dir) == (
        60,
        ("10.0.0.0/8", "2001:db8::/32"),
        ("Hi", "there"),
        None,
        tmp_path,
    )
    assert isinstance(s.dev_api_key, SecretStr) and s.dev_api_key.get_secret_value() == SECRET
    assert SECRET not in repr(s) and SECRET not in str(s)


def test_a_bad_value_is_named_with_what_is_allowed() -> None:
    assert refusal(MAX_TOKENS="0") == "MAX_TOKENS must be between 1 and 8192, got 0"
    assert refusal(MAX_TOKENS="1.0") == "MAX_TOKENS must be an integer between 1 and 8192, got '1.0'"
    assert (
        refusal(GENERATION_TIMEOUT_SECONDS="x")
        == "GENERATION_TIMEOUT_SECONDS must be a number between 1.0 and 3600.0, got 'x'"
    )
    assert refusal(QUANTIZATION="q3") == "QUANTIZATION must be one of auto, gguf, nf4, int8, none, got 'q3'"
    assert (
        refusal(BLOCKED_CIDRS="10.0.0.300/8")
        == "BLOCKED_CIDRS must be a comma-separated list of CIDRs, got '10.0.0.300/8'"
    )
    assert refusal(PORT="9464") == "METRICS_PORT must differ from PORT (9464): /metrics is served on a port of its own"
    with pytest.raises(SettingsError, match="API_KEY_PATH and KEK_PATH must be set in production"):
        load_settings({})


@pytest.mark.parametrize(
    "variable, bad",
    [
        ("CONVERSATION_DATABASE_URL", f"mysql://clawbot:{SECRET}@db:3306/clawbot"),
        ("CONVERSATION_DATABASE_URL", SECRET),
        ("DEV_API_KEY", SECRET),  # refused in production
    ],
)
def test_an_error_never_echoes_a_secret(variable: str, bad: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({variable: bad, "API_KEY_PATH": "/k", "KEK_PATH": "/kek"})
    assert variable in str(err.value) and SECRET not in str(err.value)
    assert SECRET not in str(err.value.__context__)  # the ValidationError it replaces hides its input too


@pytest.mark.parametrize("name", sorted(SECRET_FIELDS))
def test_a_validation_error_on_a_secret_field_hides_the_input(name: str) -> None:
    with pytest.raises(ValidationError) as err:
        Settings(**{name: [SECRET]})  # not a string
    assert SECRET not in str(err.value) and SECRET not in repr(err.value)


def test_tests_build_their_own_settings_and_only_load_settings_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAX_TOKENS", "7")
    monkeypatch.setenv("APP_ENV", "development")
    assert Settings().max_tokens is None and Settings(max_tokens=128).max_tokens == 128
    assert load_settings().max_tokens == 7
    s = Settings().with_overrides(max_tokens=64, conversation_database_url="postgresql://u:p@h/db")
    assert (
        s.max_tokens == 64
        and s.conversation_database_url
        and s.conversation_database_url.get_secret_value().endswith("/db")
    )
    with pytest.raises(ValidationError):
        Settings().with_overrides(max_tokens=0)


def test_bounds_and_choices_are_read_from_the_declarations() -> None:
    assert bounds_of("MAX_TOKENS") == bounds_of("max_tokens") == (1, 8192)
    assert choices_of("QUANTIZATION") == ("auto", "gguf", "nf4", "int8", "none")
    with pytest.raises(KeyError):
        bounds_of("MODEL_PATH")
