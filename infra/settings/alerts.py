"""Alert settings: thresholds and windows of the PrometheusRule, where Alertmanager mails alerts, and the labels the
Prometheus operator selects its objects by."""

from __future__ import annotations

import re
from dataclasses import dataclass

from infra.settings.values import ConfigError, Raw, boolean, config_key, integer, label_pairs, prometheus_duration, text

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class AlertSettings:
    enabled: bool
    email: str
    email_from: str
    smarthost: str
    smtp_username: str
    smtp_require_tls: bool
    selector_labels: tuple[tuple[str, str], ...]  # on the ServiceMonitor too: the operator selects by them
    group_wait: str
    cpu_percent: int
    cpu_for: str
    memory_percent: int
    memory_for: str
    first_token_ms: int
    token_latency_ms: int
    latency_for: str
    error_rate_percent: int
    error_rate_window: str
    key_requests_per_minute: int
    key_window: str
    queue_depth: int
    clock_offset_ms: int


def parse_alerts(raw: Raw) -> AlertSettings:
    enabled = boolean(raw, "alertsEnabled")
    email = text(raw, "alertEmail")
    if enabled and not _EMAIL.match(email):
        raise ConfigError(
            f"{config_key('alertEmail')} must be an e-mail address when {config_key('alertsEnabled')} is true, "
            f"got {email!r}"
        )
    return AlertSettings(
        enabled=enabled,
        email=email,
        email_from=text(raw, "alertEmailFrom", required=True),
        smarthost=text(raw, "alertSmarthost", required=True),
        smtp_username=text(raw, "alertSmtpUsername"),
        smtp_require_tls=boolean(raw, "alertSmtpRequireTls"),
        selector_labels=label_pairs(raw, "alertSelectorLabels"),
        group_wait=prometheus_duration(raw, "alertGroupWait", 0, 3600),
        cpu_percent=integer(raw, "alertCpuPercent", 1, 100),
        cpu_for=prometheus_duration(raw, "alertCpuFor", 0, 86400),
        memory_percent=integer(raw, "alertMemoryPercent", 1, 100),
        memory_for=prometheus_duration(raw, "alertMemoryFor", 0, 86400),
        first_token_ms=integer(raw, "alertFirstTokenMs", 10, 600_000),
        token_latency_ms=integer(raw, "alertTokenLatencyMs", 1, 60_000),
        latency_for=prometheus_duration(raw, "alertLatencyFor", 0, 86400),
        error_rate_percent=integer(raw, "alertErrorRatePercent", 1, 100),
        error_rate_window=prometheus_duration(raw, "alertErrorRateWindow", 1, 86400),
        key_requests_per_minute=integer(raw, "alertKeyRequestsPerMinute"),
        key_window=prometheus_duration(raw, "alertKeyWindow", 1, 86400),
        queue_depth=integer(raw, "alertQueueDepth", 1, 100_000),
        clock_offset_ms=integer(raw, "alertClockOffsetMs", 1, 60_000),
    )
