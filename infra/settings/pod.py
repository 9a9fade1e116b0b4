"""Chat pod settings: CPU and memory, image pull policy, and the timing of start (model load) and stop (drain)."""

from __future__ import annotations

from dataclasses import dataclass

from infra.settings.values import ConfigError, Raw, choice, config_key, cpu_millis, integer, memory_bytes, text

PULL_POLICIES = ("IfNotPresent", "Always", "Never")
ROLLOUT_SURGE = 1  # the Deployment's maxSurge: pods a rollout adds before it removes one
# After the drain, uvicorn closes its listeners, the engine thread stops and the process exits.
TERMINATION_MARGIN_S = 10


@dataclass(frozen=True)
class PodSettings:
    image_pull_policy: str
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    startup_timeout_seconds: int
    shutdown_grace_seconds: int
    pre_stop_sleep_seconds: int

    @property
    def termination_grace_seconds(self) -> int:
        """preStop sleep, then SHUTDOWN_GRACE_SECONDS for accepted requests, then a margin for the process to exit."""
        return self.pre_stop_sleep_seconds + self.shutdown_grace_seconds + TERMINATION_MARGIN_S


def parse_pod(raw: Raw) -> PodSettings:
    cpu_request, cpu_limit = text(raw, "cpuRequest"), text(raw, "cpuLimit")
    memory_request, memory_limit = text(raw, "memoryRequest"), text(raw, "memoryLimit")
    request_m, limit_m = cpu_millis("cpuRequest", cpu_request), cpu_millis("cpuLimit", cpu_limit)
    if not 100 <= request_m <= limit_m <= 64_000:
        raise ConfigError(
            f"{config_key('cpuRequest')} ({cpu_request}) and {config_key('cpuLimit')} ({cpu_limit}) must satisfy "
            "100m <= request <= limit <= 64"
        )
    request_b, limit_b = memory_bytes("memoryRequest", memory_request), memory_bytes("memoryLimit", memory_limit)
    if not 256 * 1024**2 <= request_b <= limit_b <= 1024**4:
        raise ConfigError(
            f"{config_key('memoryRequest')} ({memory_request}) and {config_key('memoryLimit')} ({memory_limit}) must satisfy "
            "256Mi <= request <= limit <= 1Ti"
        )
    return PodSettings(
        image_pull_policy=choice(raw, "imagePullPolicy", PULL_POLICIES),
        cpu_request=cpu_request,
        cpu_limit=cpu_limit,
        memory_request=memory_request,
        memory_limit=memory_limit,
        startup_timeout_seconds=integer(raw, "startupTimeoutSeconds", 60, 7200),
        shutdown_grace_seconds=integer(raw, "shutdownGraceSeconds"),
        pre_stop_sleep_seconds=integer(raw, "preStopSleepSeconds", 0, 120),
    )
