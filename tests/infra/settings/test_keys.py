"""The key table: Pulumi.yaml declares exactly CONFIG_KEYS (type, default, description) and the secret keys, and the
stack files set only declared keys and no plain secrets."""

from __future__ import annotations

from pathlib import Path

import yaml

from infra.settings import CONFIG_KEYS, SECRET_KEYS, STRUCTURED_KEYS
from infra.tools.synth import read_stack_config

ROOT = Path(__file__).resolve().parents[3]


def test_pulumi_yaml_schema_declares_every_key_with_type_default_and_description() -> None:
    doc = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert doc["name"] == "clawbot"
    assert doc["runtime"]["name"] == "python" and doc["runtime"]["options"]["virtualenv"] == ".venv"
    schema = doc["config"]
    assert set(schema) == {k.name for k in CONFIG_KEYS} | set(SECRET_KEYS)
    for key in CONFIG_KEYS:
        entry = schema[key.name]
        assert entry["type"] == key.type, key.name
        assert entry["default"] == key.default, key.name
        assert entry["description"] == key.description, key.name
        assert not entry.get("secret"), key.name


def test_stack_files_use_only_declared_keys_and_no_plain_secrets() -> None:
    declared = {k.name for k in CONFIG_KEYS}
    for stack in ("dev", "prod"):
        values = read_stack_config(stack)
        assert set(values) <= declared, f"Pulumi.{stack}.yaml sets undeclared keys {set(values) - declared}"
    prod_text = (ROOT / "Pulumi.prod.yaml").read_text()
    assert "pulumi config set --secret clawbot:hubToken" in prod_text
    assert "pulumi config set --secret clawbot:alertSmtpPassword" in prod_text


def test_object_keys_the_schema_cannot_type_are_documented_in_pulumi_yaml_and_stacks_name_every_secret() -> None:
    text = (ROOT / "Pulumi.yaml").read_text()
    for name in STRUCTURED_KEYS:
        assert f"#   {name}: {{" in text, f"Pulumi.yaml's header must describe the object key {name}"
        assert name not in yaml.safe_load(text)["config"]
    for stack in ("dev", "prod"):
        stack_text = (ROOT / f"Pulumi.{stack}.yaml").read_text()
        for secret in SECRET_KEYS:
            assert f"--secret {'clawbot:' if stack == 'prod' else ''}{secret}" in stack_text, (stack, secret)
