"""StackSettings: one stack's whole configuration, composed of the topic settings beside this module."""

from __future__ import annotations

from dataclasses import dataclass

from infra.settings.access import AccessSettings
from infra.settings.alerts import AlertSettings
from infra.settings.data import BackupSettings, DatabaseSettings, DataVolumeSettings
from infra.settings.gpu import GpuSettings
from infra.settings.key_store import KeyStoreSettings
from infra.settings.model import ModelSettings
from infra.settings.network import NetworkSettings
from infra.settings.pod import PodSettings
from infra.settings.redis import RedisSettings
from infra.settings.release import ReleaseSettings
from infra.settings.routing import RoutingSettings
from infra.settings.scaling import ScalingSettings
from infra.settings.target import TargetSettings
from infra.settings.tls import TlsSettings


@dataclass(frozen=True)
class StackSettings:
    stack: str
    environment: str
    namespace: str
    kubernetes_version: tuple[int, int]
    release: ReleaseSettings
    model: ModelSettings
    pod: PodSettings
    access: AccessSettings
    redis: RedisSettings
    data_volume: DataVolumeSettings
    network: NetworkSettings
    tls: TlsSettings
    gpu: GpuSettings
    scaling: ScalingSettings
    alerts: AlertSettings
    backups: BackupSettings
    database: DatabaseSettings
    key_store: KeyStoreSettings
    routing: RoutingSettings  # the Gateway in front of the chat pods, if any
    target: TargetSettings  # which cluster, and what an update may replace

    @property
    def production(self) -> bool:
        return self.environment == "production"

    @property
    def metrics_scraped(self) -> bool:
        """Whether Prometheus (through the operator) must scrape the chat pods: for the alerts, or for the HPA's
        in-flight target, which prometheus-adapter serves from Prometheus."""
        return self.alerts.enabled or self.scaling.inflight_per_pod > 0
