"""The rules that tie two topics together (infra/settings/checks.py): each refuses a stack with a message naming the
keys involved, and lets the same values through where the other topic makes them safe."""

from __future__ import annotations

import pytest

from infra.settings import ConfigError, checks, parse_settings
from infra.tools.synth import SynthError, read_stack_config, synthesize
from tests.infra.conftest import BEHIND_GATEWAY

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


def test_quantization_without_gpu_is_refused() -> None:
    with pytest.raises(ConfigError, match="clawbot:quantization 'nf4' needs a GPU"):
        parse_settings({"quantization": "nf4", "storageClass": "gp3"}, stack="dev")


def test_int8_runs_without_a_gpu() -> None:
    """On CPU nodes QUANTIZATION=int8 uses torch's weight-only int8 kernel, no bitsandbytes and no GPU."""
    settings = parse_settings({**read_stack_config("dev"), "quantization": "int8"}, stack="dev")
    assert settings.model.quantization == "int8" and not settings.gpu.enabled


DEV = read_stack_config("dev")
ARN = PROD["tlsCertificateArn"]
# One stack per cross-topic rule that breaks that rule alone, and the keys its message must name.
VIOLATIONS: dict[str, tuple[dict[str, object], tuple[str, ...]]] = {
    "public_ingress_is_deliberate": (prod_with(allowedCidrs=["0.0.0.0/0"]), ("allowedCidrs", "allowPublicIngress")),
    "load_balancer_certificate_has_a_load_balancer": (
        {**DEV, "tlsCertificateArn": ARN, "endpointHostname": "chat.example.com"},
        ("tlsCertificateArn", "serviceType"),
    ),
    "production_serves_tls": (
        prod_with(tlsCertificateArn="", endpointHostname=""),
        ("tlsCertificateArn", "allowPlaintext"),
    ),
    "gpu_limit_covers_a_rollout": (prod_with(gpuLimit=5), ("gpuLimit", "gpusPerPod", "maxReplicas")),
    "data_volume_reaches_every_replica": (prod_with(dataAccessMode="ReadWriteOnce"), ("dataAccessMode", "maxReplicas")),
    "quantization_has_a_gpu": ({**DEV, "quantization": "nf4"}, ("quantization", "gpuMode")),
    # issue 21 item 1: the canary's share, and the Gateway in front of the pods
    "canary_share_is_served": (prod_with(canary={"image": "ghcr.io/clawbot/clawbot:0.2.0"}), ("canary", "gateway")),
    "gateway_is_the_only_way_in": (
        prod_with(**{**BEHIND_GATEWAY, "serviceType": "LoadBalancer", "tlsCertificateArn": ARN}),
        ("gateway", "serviceType"),
    ),
    "gateway_routes_a_hostname": (
        prod_with(**{**BEHIND_GATEWAY, "endpointHostname": ""}),
        ("gateway", "endpointHostname"),
    ),
    "gateway_forwards_client_addresses": (
        prod_with(**{**BEHIND_GATEWAY, "trustedProxies": []}),
        ("gateway", "allowedCidrs", "trustedProxies"),
    ),
    "gateway_speaks_http_to_the_pods": (
        prod_with(**{**BEHIND_GATEWAY, "podTlsIssuer": "ClusterIssuer/ca"}),
        ("gateway", "podTlsIssuer"),
    ),
    "production_gateway_names_its_https_listener": (
        prod_with(**{**BEHIND_GATEWAY, "gatewayListener": ""}),
        ("gateway", "gatewayListener"),
    ),
    "node_drain_outlasts_pod_restarts": (
        prod_with(nodeTerminationGracePeriod="10m"),
        ("nodeTerminationGracePeriod", "disruptionBudget", "startupTimeoutSeconds"),
    ),
    "model_download_has_egress": (
        prod_with(modelHubEgressCidrs=[]),
        ("modelPath", "modelHubEgressCidrs", "ciliumPolicies"),
    ),
    # -- the key store and backups --
    "production_keeps_the_kek_in_kms": (prod_with(keyEncryption="namespace"), ("keyEncryption", "kmsDataKey")),
    "production_reaches_kms_privately": (prod_with(kmsEgressCidrs=[]), ("kmsEgressCidrs", "kmsRoleArn")),
    "production_encrypts_cluster_secrets": (prod_with(clusterSecretsKeyArn=""), ("clusterSecretsKeyArn",)),
    "production_backups_leave_the_cluster": (prod_with(backupBucket=""), ("backupBucket", "backupBucketRegion")),
}


def test_every_cross_topic_rule_has_a_case() -> None:
    assert set(VIOLATIONS) == {check.__name__ for check in checks.STACK_CHECKS}


@pytest.mark.parametrize("rule", sorted(VIOLATIONS))
def test_each_cross_topic_rule_lives_in_checks_alone(rule: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stack breaks the rule and names its keys; without that one check every topic parser accepts it."""
    values, keys = VIOLATIONS[rule]
    stack = "prod" if values.get("environment") == "production" else "dev"
    with pytest.raises(ConfigError) as err:
        parse_settings(values, stack=stack)
    assert all(f"clawbot:{k}" in str(err.value) for k in keys), str(err.value)
    monkeypatch.setattr(checks, "STACK_CHECKS", tuple(c for c in checks.STACK_CHECKS if c.__name__ != rule))
    parse_settings(values, stack=stack)


def test_a_drain_must_outlast_every_restart_the_budget_walks_through() -> None:
    """Per node: the chat pod's start-up (12m in prod) plus its termination grace (100s); two nodes at once, twice."""
    s = parse_settings(prod_with(nodeTerminationGracePeriod="13m40s"), stack="prod")
    assert s.gpu.termination_grace_period == "13m40s"
    with pytest.raises(ConfigError, match=r"Set clawbot:nodeTerminationGracePeriod to 27m20s or more"):
        parse_settings(prod_with(disruptionBudget="2", nodeTerminationGracePeriod="20m"), stack="prod")
    parse_settings(prod_with(disruptionBudget="2", nodeTerminationGracePeriod="30m"), stack="prod")
    # Without Karpenter there is no drain of ours to bound.
    parse_settings({**DEV, "nodeTerminationGracePeriod": "1m"}, stack="dev")


def test_a_hub_model_needs_a_way_out_for_the_download_and_a_local_one_none() -> None:
    for way_out in (
        {"modelHubEgressCidrs": ["0.0.0.0/0"]},
        {"ciliumPolicies": True},
        {"modelHubProxy": "http://proxy.internal:3128", "modelHubEgressCidrs": ["10.0.50.0/28"]},
    ):
        parse_settings(
            prod_with(**way_out, **({"modelHubEgressCidrs": []} if "ciliumPolicies" in way_out else {})), stack="prod"
        )
    with pytest.raises(ConfigError, match="clawbot:modelHubHosts is empty"):
        parse_settings(prod_with(modelHubEgressCidrs=[], ciliumPolicies=True, modelHubHosts=[]), stack="prod")
    # A model already on the volume (or embedded) needs no egress at all.
    parse_settings(prod_with(modelHubEgressCidrs=[], modelPath="/app/data/models/qwen3-8b"), stack="prod")
