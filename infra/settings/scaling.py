"""Scaling settings: how many chat pods run, and what the HPA between minReplicas and maxReplicas scales on."""

from __future__ import annotations

from dataclasses import dataclass

from infra.settings.values import ConfigError, Raw, boolean, config_key, integer


@dataclass(frozen=True)
class ScalingSettings:
    min_replicas: int
    max_replicas: int
    cpu_percent: int
    inflight_per_pod: int  # 0 unless customMetricsAdapter says an adapter serves the metric
    scale_down_stabilization_seconds: int

    @property
    def autoscaled(self) -> bool:
        return self.max_replicas > self.min_replicas


def parse_scaling(raw: Raw) -> ScalingSettings:
    min_replicas = integer(raw, "minReplicas", 1, 100)
    max_replicas = integer(raw, "maxReplicas", 1, 100)
    if min_replicas > max_replicas:
        raise ConfigError(
            f"{config_key('minReplicas')} ({min_replicas}) must not exceed {config_key('maxReplicas')} ({max_replicas})"
        )
    inflight_per_pod = integer(raw, "hpaInflightPerPod", 0, 10_000)
    if inflight_per_pod and not boolean(raw, "customMetricsAdapter"):
        # Without an adapter the HPA cannot read the metric, and with one metric missing it never scales down.
        raise ConfigError(
            f"{config_key('hpaInflightPerPod')} {inflight_per_pod} needs a custom-metrics adapter serving "
            f"clawbot_inflight_requests (prometheus-adapter, see docs/deploying/eks.md); install it and set "
            f"{config_key('customMetricsAdapter')}: true, or set {config_key('hpaInflightPerPod')} to 0 to scale on CPU only"
        )
    return ScalingSettings(
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        cpu_percent=integer(raw, "hpaCpuPercent", 10, 100),
        inflight_per_pod=inflight_per_pod,
        scale_down_stabilization_seconds=integer(raw, "scaleDownStabilizationSeconds", 0, 3600),
    )
