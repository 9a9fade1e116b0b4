"""Reading a stack's config: both stack files parse, and bad values are refused with a message naming the key, the
value and what is allowed."""

from __future__ import annotations

import pytest

from infra.settings import ConfigError, parse_settings
from infra.tools.synth import read_stack_config

PROD = read_stack_config("prod")


def prod_with(**changes: object) -> dict[str, object]:
    return {**PROD, **changes}


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"allowedCidrs": ["192.168.1.300/24"]},
            "clawbot:allowedCidrs must hold CIDRs like 192.168.1.0/24, got '192.168.1.300/24'",
        ),
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
        ({"nodeClassAmiAlias": "al2023@latest"}, "clawbot:nodeClassAmiAlias must pin an AMI release as family@version"),
        ({"nodeClassAmiAlias": "al2023@v2026"}, "got 'al2023@v2026'"),
        ({"nodeClassAmiAlias": "windows2022@latest"}, "families: al2023, al2, bottlerocket"),
        ({"disruptionBudget": "10%"}, "clawbot:disruptionBudget must be a node count of 1 or more"),
        ({"disruptionBudget": "0"}, "clawbot:disruptionBudget must be a node count of 1 or more"),
        ({"nodeTerminationGracePeriod": "Never"}, "clawbot:nodeTerminationGracePeriod must be a duration like 1h"),
        ({"nodeTerminationGracePeriod": "an hour"}, "clawbot:nodeTerminationGracePeriod must be a duration"),
        ({"modelHubProxy": "proxy:3128"}, "clawbot:modelHubProxy must be a proxy URL like http://proxy.internal:3128"),
        ({"modelHubProxy": "http://proxy.internal"}, "clawbot:modelHubProxy must be a proxy URL"),
        (
            {"modelHubProxy": "http://proxy.internal:3128", "modelHubEgressCidrs": []},
            "clawbot:modelHubProxy needs clawbot:modelHubEgressCidrs",
        ),
        ({"ciliumPolicies": True}, "clawbot:modelHubEgressCidrs ['0.0.0.0/0'] would open TCP 443"),
        ({"modelHubHosts": ["https://huggingface.co"]}, "clawbot:modelHubHosts must hold host names"),
        ({"modelDownloadTimeoutSeconds": 10}, "clawbot:modelDownloadTimeoutSeconds must be between 60 and 86400"),
        (
            {"podTlsIssuer": "ClusterIssuer/letsencrypt", "endpointHostname": "", "tlsCertificateArn": ""},
            "is taken for a public CA (ACME)",
        ),
        (
            {"podTlsIssuerPrivate": True},
            "clawbot:podTlsIssuerPrivate says what the issuer named by clawbot:podTlsIssuer is",
        ),
    ],
)
def test_bad_values_are_refused_with_a_message_naming_them(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(prod_with(**changes), stack="prod")
    assert message in str(err.value)


def test_dtype_and_prefix_cache_are_stack_settings() -> None:
    settings = parse_settings({**read_stack_config("dev"), "dtype": "float32", "prefixCacheTokens": 0}, stack="dev")
    assert (settings.model.dtype, settings.model.prefix_cache_tokens) == ("float32", 0)


def test_both_stack_files_parse() -> None:
    prod = parse_settings(PROD, stack="prod")
    dev = parse_settings(read_stack_config("dev"), stack="dev")
    assert prod.production and prod.gpu.mode == "karpenter" and prod.model.quantization == "nf4"
    assert (prod.scaling.min_replicas, prod.scaling.max_replicas) == (2, 10)
    assert prod.network.allowed_cidrs == ("192.168.1.0/24", "10.8.0.0/16")
    assert not dev.production and dev.gpu.mode == "none" and dev.network.service_type == "ClusterIP"
    assert (dev.scaling.min_replicas, dev.scaling.max_replicas) == (1, 1)


def test_bottlerocket_and_al2_releases_pin_too_and_an_existing_node_class_needs_no_alias() -> None:
    for alias in ("bottlerocket@v1.40.0", "al2@v20260724", "al2023@v20260724"):
        assert parse_settings(prod_with(nodeClassAmiAlias=alias), stack="prod").gpu.ami_alias == alias
    # The EC2NodeClass named by nodeClassName is someone else's: its AMI is not this stack's to pin.
    parse_settings(prod_with(nodeClassName="shared-gpu", nodeClassAmiAlias="al2023@latest"), stack="prod")


def test_the_hub_id_pattern_is_the_apps() -> None:
    from app.inference import loader
    from infra.settings.model import HUB_ID

    assert HUB_ID.pattern == loader._HUB_ID.pattern
    for path, from_hub in (
        ("Qwen/Qwen3-8B", True),
        ("embedded:smollm2-135m-instruct", False),
        ("/app/data/models/qwen3-8b", False),
        ("org/model.gguf", False),
    ):
        assert parse_settings({**prod_with(modelPath=path)}, stack="prod").model.from_hub is from_hub, path
