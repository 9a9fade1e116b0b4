"""Stack settings: validation errors name the key, the value and what is allowed; Pulumi.yaml matches CONFIG_KEYS."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from infra.settings import CONFIG_KEYS, SECRET_KEYS, ConfigError, parse_settings
from infra.synth import SynthError, read_stack_config, synthesize

ROOT = Path(__file__).resolve().parents[2]
PROD = read_stack_config("prod")


def prod_with(**changes: object) -> dict[str, object]:
    return {**PROD, **changes}


@pytest.mark.parametrize("open_cidr", ["0.0.0.0/0", "::/0"])
def test_prod_refuses_open_ingress_naming_the_key_and_value(open_cidr: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(prod_with(allowedCidrs=["192.168.1.0/24", open_cidr]), stack="prod")
    assert "clawbot:allowedCidrs" in str(err.value) and open_cidr in str(err.value)
    assert "allowPublicIngress" in str(err.value)


def test_prod_allows_open_ingress_only_when_asked_on_purpose() -> None:
    s = parse_settings(prod_with(allowedCidrs=["0.0.0.0/0"], allowPublicIngress=True), stack="prod")
    assert s.network.allowed_cidrs == ("0.0.0.0/0",)


def test_preview_of_prod_stops_on_open_cidr() -> None:
    with pytest.raises(SynthError, match=r"clawbot:allowedCidrs contains 0\.0\.0\.0/0"):
        synthesize("prod", overrides={"allowedCidrs": ["0.0.0.0/0"]})


def test_dev_stack_may_use_an_open_cidr() -> None:
    s = parse_settings({"allowedCidrs": ["0.0.0.0/0"], "storageClass": "gp3"}, stack="dev")
    assert s.network.allowed_cidrs == ("0.0.0.0/0",)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"allowedCidrs": ["192.168.1.300/24"]}, "clawbot:allowedCidrs must hold CIDRs like 192.168.1.0/24, got '192.168.1.300/24'"),
        ({"allowedCidrs": ["192.168.1.5/24"]}, "got '192.168.1.5/24'"),  # host bits set: almost always a typo
        ({"minReplicas": 5, "maxReplicas": 3}, "clawbot:minReplicas (5) must not exceed clawbot:maxReplicas (3)"),
        ({"maxTokens": 0}, "clawbot:maxTokens must be between 1 and 8192, got 0"),
        ({"maxTokens": "many"}, "clawbot:maxTokens must be an integer between 1 and 8192, got 'many'"),
        ({"cpuRequest": "8"}, "clawbot:cpuRequest (8) and clawbot:cpuLimit (4) must satisfy"),
        ({"memoryLimit": "8GB"}, "clawbot:memoryLimit must be a memory quantity like 4Gi or 512Mi, got '8GB'"),
        ({"quantization": "q4"}, "clawbot:quantization must be one of auto, gguf, nf4, int8, none, got 'q4'"),
        ({"dtype": "fp8"}, "clawbot:dtype must be one of auto, float32, bfloat16, float16, got 'fp8'"),
        ({"prefixCacheTokens": -1}, "clawbot:prefixCacheTokens must be between 0 and 100000000, got -1"),
        ({"gpuTaintEffect": "NoRun"}, "clawbot:gpuTaintEffect must be one of NoSchedule, PreferNoSchedule, NoExecute"),
        ({"allowedCidrs": []}, "must list at least one CIDR when clawbot:serviceType is LoadBalancer"),
        ({"dataAccessMode": "ReadWriteOnce"}, "ReadWriteOnce cannot serve clawbot:maxReplicas 10"),
        ({"gpuLimit": 1}, "clawbot:gpuLimit (1) is below"),
        ({"image": "ghcr.io/clawbot/clawbot:latest"}, "clawbot:image must pin a tag or digest in production"),
        ({"alertEmail": "oncall"}, "clawbot:alertEmail must be an e-mail address"),
        ({"nodeClassRole": ""}, "clawbot:nodeClassRole must be set when clawbot:gpuMode is karpenter"),
        ({"gpuNodeLabels": ["no-equals-sign"]}, "clawbot:gpuNodeLabels must hold key=value pairs"),
        ({"unknownKey": 1}, "unknown config key(s) clawbot:unknownKey"),
    ],
)
def test_bad_values_are_refused_with_a_message_naming_them(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(prod_with(**changes), stack="prod")
    assert message in str(err.value)


def test_quantization_without_gpu_is_refused() -> None:
    with pytest.raises(ConfigError, match="clawbot:quantization 'nf4' needs a GPU"):
        parse_settings({"quantization": "nf4"}, stack="dev")


def test_int8_runs_without_a_gpu() -> None:
    """On CPU nodes QUANTIZATION=int8 uses torch's weight-only int8 kernel, no bitsandbytes and no GPU."""
    settings = parse_settings({**read_stack_config("dev"), "quantization": "int8"}, stack="dev")
    assert settings.quantization == "int8" and not settings.gpu.enabled


def test_dtype_and_prefix_cache_are_stack_settings() -> None:
    settings = parse_settings({**read_stack_config("dev"), "dtype": "float32", "prefixCacheTokens": 0}, stack="dev")
    assert (settings.dtype, settings.prefix_cache_tokens) == ("float32", 0)


def test_both_stack_files_parse() -> None:
    prod = parse_settings(PROD, stack="prod")
    dev = parse_settings(read_stack_config("dev"), stack="dev")
    assert prod.production and prod.gpu.mode == "karpenter" and prod.quantization == "nf4"
    assert (prod.scaling.min_replicas, prod.scaling.max_replicas) == (2, 10)
    assert prod.network.allowed_cidrs == ("192.168.1.0/24", "10.8.0.0/16")
    assert not dev.production and dev.gpu.mode == "none" and dev.network.service_type == "ClusterIP"
    assert (dev.scaling.min_replicas, dev.scaling.max_replicas) == (1, 1)


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
    from infra.release_settings import STRUCTURED_KEYS

    text = (ROOT / "Pulumi.yaml").read_text()
    for name in STRUCTURED_KEYS:
        assert f"#   {name}: {{" in text, f"Pulumi.yaml's header must describe the object key {name}"
        assert name not in yaml.safe_load(text)["config"]
    for stack in ("dev", "prod"):
        stack_text = (ROOT / f"Pulumi.{stack}.yaml").read_text()
        for secret in SECRET_KEYS:
            assert f"--secret {'clawbot:' if stack == 'prod' else ''}{secret}" in stack_text, (stack, secret)
