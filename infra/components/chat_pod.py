"""The chat Deployments' spec: container, probes, mounts, drain timing, placement, release labels and the checksum
that rolls pods. The stable set and a canary share all of it but the image, the track and the replica count."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi

from infra.components.gpu_node_pool import PodPlacement
from infra.components.rollout import progress_deadline_seconds
from infra.components.secret_store import PodKeyAccess, SecretNames, pod_key_access
from infra.contract import (
    APP_UID,
    CANARY,
    CANARY_WEIGHT_ANNOTATION,
    CHAT_LABELS,
    COMMON_LABELS,
    CONTAINER_NAME,
    DATA_DIR,
    DATABASE_SECRET_KEY,
    DATABASE_URL_ENV,
    HEALTH_PATH,
    KEYS_DIR,
    KEYS_FILE,
    METRICS_PORT,
    METRICS_PORT_NAME,
    PORT,
    PORT_NAME,
    READY_PATH,
    STABLE,
    TLS_DIR,
    TMP_DIR,
    TRACK_LABEL,
    VERSION_LABEL,
)
from infra.images import parse_image
from infra.settings.pod import ROLLOUT_SURGE
from infra.settings.stack import StackSettings
from infra.settings.values import go_duration

PROBE_PERIOD_S = 10
# Restricted Pod Security for every container we run: the namespace enforces it too.
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
# The pod template carries this hash of the ConfigMap data and the key Secrets: a change to either is a new
# template, so the Deployment rolls its pods (the ConfigMap is read once, at start, through envFrom).
CHECKSUM_ANNOTATION = "clawbot.dev/config-checksum"
# Karpenter's pod annotation: "true", or a duration after the pod's start during which its node is not disrupted.
DO_NOT_DISRUPT_ANNOTATION = "karpenter.sh/do-not-disrupt"
# ReplicaSets kept for `kubectl rollout history`; releases themselves are rolled back through the stack (imageHistory).
REVISION_HISTORY = 3


@dataclass(frozen=True)
class PodInputs:
    settings: StackSettings
    placement: PodPlacement
    secrets: SecretNames
    config_map_name: str
    claim_name: str
    tls_secret_name: str | None  # the kubernetes.io/tls Secret served on PORT, when TLS is in the pod
    database_secret_name: str | None = None  # the Secret holding CONVERSATION_DATABASE_URL, when a database is set

    @property
    def key_access(self) -> PodKeyAccess:
        return pod_key_access(self.settings.key_store, self.secrets)


@dataclass(frozen=True)
class Release:
    """One Deployment's part of the service: its track, its image and its replica count (None: the HPA's)."""

    track: str
    image: str
    replicas: int | None
    weight_percent: int | None = None  # the canary's requested share of requests

    @property
    def selector(self) -> dict[str, str]:
        return {**CHAT_LABELS, TRACK_LABEL: self.track}

    @property
    def labels(self) -> dict[str, str]:
        return {**self.selector, **COMMON_LABELS, VERSION_LABEL: parse_image(self.image).version_label}

    @property
    def annotations(self) -> dict[str, str]:
        return {} if self.weight_percent is None else {CANARY_WEIGHT_ANNOTATION: str(self.weight_percent)}


def stable_release(s: StackSettings) -> Release:
    # With an HPA the replica count belongs to it; a fixed count would fight it on every `pulumi up`.
    return Release(STABLE, s.release.image, None if s.scaling.autoscaled else s.scaling.min_replicas)


def canary_release(s: StackSettings) -> Release | None:
    c = s.release.canary
    return Release(CANARY, c.image, c.replicas, c.weight_percent) if c else None


def config_checksum(env: Mapping[str, str], secrets_digest: pulumi.Input[str]) -> pulumi.Output[str]:
    """SHA-256 over the container's environment and the key Secrets' digest."""

    def digest(secrets: str) -> str:
        return hashlib.sha256(json.dumps({"env": dict(env), "secrets": secrets}, sort_keys=True).encode()).hexdigest()

    return pulumi.Output.from_input(secrets_digest).apply(digest)


def database_digest(
    keys_digest: pulumi.Input[str], key: pulumi.Input[str], database_url: pulumi.Input[str]
) -> pulumi.Output[str]:
    """The key Secrets' digest extended by an HMAC of the database URL under a secret key: the URL's password may be
    guessable, so a plain hash of it must not sit in the pod template."""

    def digest(values: list[str]) -> str:
        keys, hmac_key, url = values
        tag = hmac.new(hmac_key.encode(), url.encode(), hashlib.sha256).hexdigest()
        return hashlib.sha256(f"{keys}\n{tag}".encode()).hexdigest()

    return pulumi.Output.unsecret(pulumi.Output.all(keys_digest, key, database_url).apply(digest))


def startup_probe_failures(budget_s: int) -> int:
    """Failed probes, one per PROBE_PERIOD_S, before the kubelet restarts a pod that is not ready: the budget."""
    return max(1, budget_s // PROBE_PERIOD_S)


def _probe(path: str, *, period: int, failures: int, https: bool, timeout: int = 3) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": PORT_NAME, "scheme": "HTTPS" if https else "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _container(p: PodInputs, image: str) -> dict[str, Any]:
    pod = p.settings.pod
    https = p.tls_secret_name is not None
    limits = {"cpu": pod.cpu_limit, "memory": pod.memory_limit, **p.placement.limits}
    requests = {"cpu": pod.cpu_request, "memory": pod.memory_request, **p.placement.limits}
    mounts = [
        {"name": "data", "mountPath": DATA_DIR},
        {"name": "tmp", "mountPath": TMP_DIR},
        # Whole-directory mounts (no subPath) so the kubelet swaps in rotated keys and renewed certificates.
        {"name": "keys", "mountPath": KEYS_DIR, "readOnly": True},
        *p.key_access.mounts,
    ]
    if https:
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image,
        "imagePullPolicy": pod.image_pull_policy,
        "args": ["python", "-m", "app"],  # args, not command: the image's ENTRYPOINT (tini) stays PID 1
        "ports": [
            {"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"},
            {"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "envFrom": [{"configMapRef": {"name": p.config_map_name}}],
        **(
            {
                "env": [
                    {
                        "name": DATABASE_URL_ENV,
                        "valueFrom": {"secretKeyRef": {"name": p.database_secret_name, "key": DATABASE_SECRET_KEY}},
                    }
                ]
            }
            if p.database_secret_name
            else {}
        ),
        "resources": {"limits": limits, "requests": requests},
        # Start-up is judged on readiness to serve (model downloaded, loaded and warmed), bounded by the stack's
        # start-up budget: a stalled download or load is restarted. Liveness only starts once it has passed.
        "startupProbe": _probe(
            READY_PATH, period=PROBE_PERIOD_S, failures=startup_probe_failures(pod.startup_timeout_seconds), https=https
        ),
        "livenessProbe": _probe(HEALTH_PATH, period=PROBE_PERIOD_S, failures=3, https=https),
        "readinessProbe": _probe(READY_PATH, period=5, failures=2, https=https),
        "securityContext": {**CONTAINER_SECURITY, "runAsUser": APP_UID, "runAsGroup": APP_UID},
        "volumeMounts": mounts,
    }
    if pod.pre_stop_sleep_seconds:
        # Keep serving while the endpoint leaves the Service and the NLB target group; SIGTERM comes after.
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": pod.pre_stop_sleep_seconds}}}
    return container


def _volumes(p: PodInputs) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": "data", "persistentVolumeClaim": {"claimName": p.claim_name}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}},
        {
            "name": "keys",
            "secret": {
                "secretName": p.secrets.keys,
                "defaultMode": 0o440,
                "items": [{"key": KEYS_FILE, "path": KEYS_FILE}],
            },
        },
        *p.key_access.volumes,
    ]
    if p.tls_secret_name is not None:
        volumes.append(
            {
                "name": "tls",
                "secret": {
                    "secretName": p.tls_secret_name,
                    "defaultMode": 0o440,
                    "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}],
                },
            }
        )
    return volumes


def _affinity(p: PodInputs, release: Release) -> dict[str, Any]:
    affinity = dict(p.placement.affinity() or {})
    if release.track == CANARY and p.settings.data_volume.access_mode == "ReadWriteOnce":
        # A ReadWriteOnce volume attaches to one node: the canary must run where the stable pods mount it.
        affinity["podAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {"matchLabels": {**CHAT_LABELS, TRACK_LABEL: STABLE}},
                    "topologyKey": "kubernetes.io/hostname",
                }
            ]
        }
    return affinity


def _unseal_step(p: PodInputs, image: str) -> list[dict[str, Any]]:
    """keyEncryption namespace: the init step that reads the KEK and leaves only the data key for the chat container."""
    access = p.key_access
    if not access.init_args:
        return []
    return [
        {
            "name": "unseal-data-key",
            "image": image,
            "imagePullPolicy": p.settings.pod.image_pull_policy,
            "args": list(access.init_args),
            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
            "securityContext": {**CONTAINER_SECURITY, "runAsUser": APP_UID, "runAsGroup": APP_UID},
            "volumeMounts": [{"name": "keys", "mountPath": KEYS_DIR, "readOnly": True}, *access.init_mounts],
        }
    ]


def pod_security_context() -> dict[str, Any]:
    """The pod-level security of every pod that mounts the data volume: the app's user owns what it writes there."""
    return {
        "runAsNonRoot": True,
        "runAsUser": APP_UID,
        "runAsGroup": APP_UID,
        "fsGroup": APP_UID,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def do_not_disrupt(s: StackSettings) -> str:
    """Karpenter leaves a chat pod's node alone while the pod loads its model (counted from the pod's start), so
    consolidation never throws a half-finished load away; after that drift, expiry and consolidation may replace the
    node, draining the pod through its preStop sleep and SHUTDOWN_GRACE_SECONDS so no stream is cut. `"true"` would
    block drift for good, and AMI updates would never roll."""
    return go_duration(s.pod.startup_timeout_seconds)


def deployment_spec(p: PodInputs, release: Release, checksum: pulumi.Input[str]) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        # Its own account: an IAM role (KMS mode) or the KEK reader's Role (namespace mode), and no API token mounted.
        "serviceAccountName": p.secrets.service_account,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # preStop sleep + SHUTDOWN_GRACE_SECONDS + a margin: the kubelet never kills a pod that is still draining.
        "terminationGracePeriodSeconds": p.settings.pod.termination_grace_seconds,
        "securityContext": pod_security_context(),
        **({"initContainers": init} if (init := _unseal_step(p, release.image)) else {}),
        "containers": [_container(p, release.image)],
        "volumes": _volumes(p),
        # Spread replicas so one node loss takes one replica.
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": dict(CHAT_LABELS)},
            }
        ],
    }
    if p.placement.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in p.placement.tolerations]
    affinity = _affinity(p, release)
    if affinity:
        pod_spec["affinity"] = affinity
    spec: dict[str, Any] = {
        "selector": {"matchLabels": release.selector},
        # Progress is a pod becoming Ready; a GPU pod's provisioning and start-up may take that long in between.
        "progressDeadlineSeconds": progress_deadline_seconds(p.settings),
        # One extra pod at a time and none taken away first: settings hold gpuLimit to maxReplicas + this surge.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": ROLLOUT_SURGE}},
        "revisionHistoryLimit": REVISION_HISTORY,
        "template": {
            "metadata": {
                "labels": release.labels,
                "annotations": {
                    DO_NOT_DISRUPT_ANNOTATION: do_not_disrupt(p.settings),
                    CHECKSUM_ANNOTATION: checksum,
                },
            },
            "spec": pod_spec,
        },
    }
    if release.replicas is not None:
        spec["replicas"] = release.replicas
    return spec
