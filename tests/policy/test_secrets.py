"""no-secret-values-in-plain-config: a Secret's value copied into a ConfigMap or env literal stops the preview."""

from __future__ import annotations

import base64
from typing import Any

from guardrails.secrets import no_plaintext_secrets
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE

from .conftest import Violations, stack_args, stack_resource
from .objects import container, deployment

TOKEN = "hf_9Yx2LmQpR7tZ"


def secret(string_data: dict[str, str] | None = None, data: dict[str, str] | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {"metadata": {"name": "model-hub", "namespace": "clawbot"}, "type": "Opaque"}
    if string_data is not None:
        props["stringData"] = string_data
    if data is not None:
        props["data"] = data
    return props


def config_map(data: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": "clawbot-config", "namespace": "clawbot"}, "data": data}


def run(*resources: Any) -> Violations:
    v = Violations()
    no_plaintext_secrets.validate(stack_args(*resources), v)
    return v


def test_secret_referenced_by_name_only_passes() -> None:
    env = [
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "model-hub", "key": "token"}}},
        {"name": "MAX_TOKENS", "value": "2048"},
    ]
    assert (
        run(
            stack_resource("Secret", secret({"token": TOKEN})),
            stack_resource("ConfigMap", config_map({"MODEL_PATH": "/app/data/models/x", "QUANTIZATION": "nf4"})),
            stack_resource("Deployment", deployment(container(env=env))),
        )
        == []
    )


def test_secret_value_in_config_map_fails_without_echoing_the_value() -> None:
    cm = stack_resource("ConfigMap", config_map({"settings.env": f"HF_TOKEN={TOKEN}\n"}), name="cm")
    v = run(stack_resource("Secret", secret({"token": TOKEN})), cm)
    assert len(v) == 1
    message, urn = v[0]
    assert "clawbot/clawbot-config" in message and "'settings.env'" in message and "'token'" in message
    assert TOKEN not in message
    assert urn == cm.urn


def test_base64_data_is_decoded_before_comparing() -> None:
    encoded = base64.b64encode(TOKEN.encode()).decode()
    v = run(
        stack_resource("Secret", secret(data={"token": encoded})),
        stack_resource("ConfigMap", config_map({"token": TOKEN})),
    )
    assert len(v) == 1


def test_secret_value_as_env_literal_fails() -> None:
    env = [{"name": "HF_TOKEN", "value": TOKEN}]
    v = run(
        stack_resource("Secret", secret({"token": TOKEN})), stack_resource("Deployment", deployment(container(env=env)))
    )
    assert len(v) == 1 and "env 'HF_TOKEN'" in v.messages[0] and "'chat'" in v.messages[0]


def test_short_values_are_not_compared() -> None:
    # "true" in a Secret would otherwise match every boolean in every ConfigMap.
    assert (
        run(
            stack_resource("Secret", secret({"enabled": "true"})),
            stack_resource("ConfigMap", config_map({"FEATURE": "true"})),
        )
        == []
    )


def test_unknown_values_during_preview_are_skipped_not_fatal() -> None:
    v = run(
        stack_resource("Secret", secret({"generated": UNKNOWN_STRING_VALUE, "token": TOKEN})),
        stack_resource("ConfigMap", config_map({"a": UNKNOWN_STRING_VALUE, "b": TOKEN})),
    )
    assert len(v) == 1 and "'b'" in v.messages[0]
