"""The chat service on Kubernetes: namespace, ConfigMap, data volume, Deployment, Service :18789, PDB and optional Redis."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.contract import (
    API_KEY_PATH,
    APP_UID,
    CHAT_LABELS,
    COMMON_LABELS,
    CONTAINER_NAME,
    DATA_DIR,
    HEALTH_PATH,
    KEK_DIR,
    KEK_FILE,
    KEK_PATH,
    KEYS_DIR,
    KEYS_FILE,
    METRICS_PORT,
    METRICS_PORT_NAME,
    METRICS_SERVICE_LABELS,
    PORT,
    PORT_NAME,
    READY_PATH,
    REDIS_LABELS,
    REDIS_PORT,
    TMP_DIR,
)
from infra.gpu_node_pool import PodPlacement
from infra.secret_store import SecretNames
from infra.settings import StackSettings

PROBE_PERIOD_S = 10
# Restricted Pod Security for every container we run: the namespace enforces it too.
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def service_env(settings: StackSettings, redis_url: str | None) -> dict[str, str]:
    """The non-secret environment of the chat container; every name is one app.settings.ENV_VARS reads."""
    env = {
        "APP_ENV": settings.environment,
        "HOST": "0.0.0.0",
        "PORT": str(PORT),
        "METRICS_PORT": str(METRICS_PORT),
        "MODEL_PATH": settings.model_path,
        "QUANTIZATION": settings.quantization,
        "MAX_TOKENS": str(settings.max_tokens),
        "MAX_BATCH_SIZE": str(settings.max_batch_size),
        "DATA_DIR": DATA_DIR,
        "API_KEY_PATH": API_KEY_PATH,
        "KEK_PATH": KEK_PATH,
        "JWT_TTL_SECONDS": str(settings.jwt_ttl_seconds),
        "RATE_LIMIT_PER_KEY": str(settings.rate_limit_per_key),
        # The app flags a key as abnormal at the same rate the alert fires on.
        "ABNORMAL_KEY_PER_MINUTE": str(settings.alerts.key_requests_per_minute),
        "ALLOWED_CIDRS": ",".join(settings.network.allowed_cidrs),
    }
    if settings.data_access_mode == "ReadWriteMany":
        # Replicas on several nodes share /app/data: SQLite's WAL index lives in shared memory of one host,
        # so the conversation store uses the rollback journal and file locks instead.
        env["CONVERSATION_JOURNAL"] = "delete"
    if settings.network.trusted_proxies:
        env["TRUSTED_PROXIES"] = ",".join(settings.network.trusted_proxies)
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


@dataclass
class ChatServiceArgs:
    settings: StackSettings
    placement: PodPlacement
    secrets: SecretNames
    name_prefix: str = "clawbot"


class ChatService(pulumi.ComponentResource):
    namespace: pulumi.Output[str]
    deployment_name: pulumi.Output[str]
    service_name: pulumi.Output[str]
    endpoint_url: pulumi.Output[str]

    def __init__(self, name: str, args: ChatServiceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("clawbot:infra:ChatService", name, None, opts)
        s, prefix = args.settings, args.name_prefix
        child = pulumi.ResourceOptions(parent=self)
        labels = {**CHAT_LABELS, **COMMON_LABELS}

        self.ns = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata={
                "name": s.namespace,
                "labels": {
                    **COMMON_LABELS,
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            },
            opts=child,
        )
        ns_name = self.ns.metadata["name"]
        in_ns = pulumi.ResourceOptions(parent=self, depends_on=[self.ns])

        redis_url = None
        self.redis_deployment = self.redis_service = None
        if s.redis_enabled:
            redis_url = f"redis://{prefix}-redis.{s.namespace}.svc.cluster.local:{REDIS_PORT}/0"
            self.redis_deployment, self.redis_service = _redis(name, prefix, s, ns_name, in_ns)

        self.env = service_env(s, redis_url)
        self.config_map = k8s.core.v1.ConfigMap(
            f"{name}-config",
            metadata={"name": f"{prefix}-config", "namespace": ns_name, "labels": labels},
            data=self.env,
            opts=in_ns,
        )

        pvc_spec: dict[str, Any] = {
            "accessModes": [s.data_access_mode],
            "resources": {"requests": {"storage": s.data_volume_size}},
        }
        if s.storage_class:
            pvc_spec["storageClassName"] = s.storage_class
        self.pvc = k8s.core.v1.PersistentVolumeClaim(
            f"{name}-data",
            metadata={"name": f"{prefix}-data", "namespace": ns_name, "labels": labels},
            spec=pvc_spec,
            opts=in_ns,
        )

        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata={"name": prefix, "namespace": ns_name, "labels": labels},
            spec=_deployment_spec(s, args, labels),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.ns, self.config_map, self.pvc]),
        )

        service_spec: dict[str, Any] = {
            "type": s.network.service_type,
            "selector": dict(CHAT_LABELS),
            "ports": [{"name": PORT_NAME, "port": PORT, "targetPort": PORT_NAME, "protocol": "TCP"}],
        }
        if s.network.service_type == "LoadBalancer":
            # The load balancer drops other sources before they reach a node; the NetworkPolicy is the second wall.
            service_spec["loadBalancerSourceRanges"] = list(s.network.allowed_cidrs)
            # Local keeps the client's source address, so the NetworkPolicy ipBlocks and ALLOWED_CIDRS see it (Cluster would SNAT it).
            service_spec["externalTrafficPolicy"] = "Local"
        self.service = k8s.core.v1.Service(
            f"{name}-service",
            metadata={"name": prefix, "namespace": ns_name, "labels": labels},
            spec=service_spec,
            opts=in_ns,
        )

        # Prometheus scrapes this ClusterIP Service; the LoadBalancer above never carries the metrics port.
        self.metrics_service = k8s.core.v1.Service(
            f"{name}-metrics-service",
            metadata={"name": f"{prefix}-metrics", "namespace": ns_name, "labels": {**COMMON_LABELS, **METRICS_SERVICE_LABELS}},
            spec={
                "type": "ClusterIP",
                "selector": dict(CHAT_LABELS),
                "ports": [{"name": METRICS_PORT_NAME, "port": METRICS_PORT, "targetPort": METRICS_PORT_NAME, "protocol": "TCP"}],
            },
            opts=in_ns,
        )

        # maxUnavailable 1 lets a node drain proceed with one replica and never takes two away at once.
        self.pdb = k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata={"name": prefix, "namespace": ns_name, "labels": labels},
            spec={"maxUnavailable": 1, "selector": {"matchLabels": dict(CHAT_LABELS)}},
            opts=in_ns,
        )

        self.namespace = ns_name
        self.deployment_name = self.deployment.metadata["name"]
        self.service_name = self.service.metadata["name"]
        self.endpoint_url = _endpoint_url(self.service, s)
        self.register_outputs({"namespace": self.namespace, "endpointUrl": self.endpoint_url})


def _endpoint_url(service: k8s.core.v1.Service, s: StackSettings) -> pulumi.Output[str]:
    if s.network.service_type != "LoadBalancer":
        return pulumi.Output.concat("http://", service.metadata["name"], f".{s.namespace}.svc.cluster.local:{PORT}")

    def from_status(status: Any) -> str:
        ingress = ((status or {}).get("load_balancer") or (status or {}).get("loadBalancer") or {}).get("ingress") or []
        if not ingress:
            return "pending: the load balancer has no address yet"
        address = ingress[0].get("ip") or ingress[0].get("hostname")
        return f"http://{address}:{PORT}"

    return service.status.apply(lambda st: from_status(_plain(st)))


def _plain(value: Any) -> Any:
    """Service status arrives as typed output objects from the provider and as dicts from mocks."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return {k: _plain(getattr(value, k)) for k in dir(value) if not k.startswith("_") and not callable(getattr(value, k))}


def _probe(path: str, *, period: int, failures: int, timeout: int = 3) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _deployment_spec(s: StackSettings, args: ChatServiceArgs, labels: dict[str, str]) -> dict[str, Any]:
    limits = {"cpu": s.cpu_limit, "memory": s.memory_limit, **args.placement.limits}
    requests = {"cpu": s.cpu_request, "memory": s.memory_request, **args.placement.limits}
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": s.image,
        "imagePullPolicy": s.image_pull_policy,
        # args, not command: the image's ENTRYPOINT (tini, PID 1) stays and forwards SIGTERM to the server.
        "args": ["python", "-m", "app"],
        "ports": [
            {"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"},
            {"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "envFrom": [{"configMapRef": {"name": f"{args.name_prefix}-config"}}],
        "resources": {"limits": limits, "requests": requests},
        # Model load (download, quantize, warm up) can take many minutes; liveness only starts once it is up.
        "startupProbe": _probe(HEALTH_PATH, period=PROBE_PERIOD_S, failures=max(1, s.startup_timeout_seconds // PROBE_PERIOD_S)),
        "livenessProbe": _probe(HEALTH_PATH, period=PROBE_PERIOD_S, failures=3),
        "readinessProbe": _probe(READY_PATH, period=5, failures=2),
        "securityContext": {**CONTAINER_SECURITY, "runAsUser": APP_UID, "runAsGroup": APP_UID},
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "tmp", "mountPath": TMP_DIR},
            # Whole-directory mounts (no subPath) so the kubelet swaps in rotated keys and the app reloads them.
            {"name": "kek", "mountPath": KEK_DIR, "readOnly": True},
            {"name": "keys", "mountPath": KEYS_DIR, "readOnly": True},
        ],
        # Stop taking new requests before SIGTERM; the Service needs a moment to drop the endpoint.
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": s.termination_grace_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": APP_UID,
            "runAsGroup": APP_UID,
            "fsGroup": APP_UID,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": f"{args.name_prefix}-data"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}},
            {"name": "kek", "secret": {"secretName": args.secrets.kek, "defaultMode": 0o440, "items": [{"key": KEK_FILE, "path": KEK_FILE}]}},
            {"name": "keys", "secret": {"secretName": args.secrets.keys, "defaultMode": 0o440, "items": [{"key": KEYS_FILE, "path": KEYS_FILE}]}},
        ],
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
    if args.placement.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in args.placement.tolerations]
    affinity = args.placement.affinity()
    if affinity:
        pod_spec["affinity"] = affinity
    spec: dict[str, Any] = {
        "selector": {"matchLabels": dict(CHAT_LABELS)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "revisionHistoryLimit": 5,
        "template": {
            "metadata": {
                "labels": labels,
                # Consolidation must not evict a pod mid-generation; the PDB governs voluntary drains instead.
                "annotations": {"karpenter.sh/do-not-disrupt": "true"},
            },
            "spec": pod_spec,
        },
    }
    # With an HPA the replica count belongs to it; a fixed count here would fight it on every `pulumi up`.
    if not s.scaling.autoscaled:
        spec["replicas"] = s.scaling.min_replicas
    return spec


# A high UID so it cannot collide with a host account (checkov CKV_K8S_40); redis runs as any UID, and /data
# is an emptyDir owned through fsGroup.
REDIS_UID = 10001


def _redis(
    name: str, prefix: str, s: StackSettings, ns_name: pulumi.Input[str], opts: pulumi.ResourceOptions
) -> tuple[k8s.apps.v1.Deployment, k8s.core.v1.Service]:
    labels = {**REDIS_LABELS, **COMMON_LABELS}
    deployment = k8s.apps.v1.Deployment(
        f"{name}-redis",
        metadata={"name": f"{prefix}-redis", "namespace": ns_name, "labels": labels},
        spec={
            "replicas": 1,
            "selector": {"matchLabels": dict(REDIS_LABELS)},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True, "runAsUser": REDIS_UID, "runAsGroup": REDIS_UID, "fsGroup": REDIS_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "redis",
                            "image": s.redis_image,
                            # Cache and counters only: losing them on restart is fine, so no persistence.
                            "args": ["--save", "", "--appendonly", "no", "--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru"],
                            "ports": [{"name": "redis", "containerPort": REDIS_PORT, "protocol": "TCP"}],
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "384Mi"}},
                            "readinessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 5},
                            "livenessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 10},
                            "securityContext": {**CONTAINER_SECURITY, "runAsUser": REDIS_UID, "runAsGroup": REDIS_UID},
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        }
                    ],
                    "volumes": [{"name": "data", "emptyDir": {"sizeLimit": "512Mi"}}],
                },
            },
        },
        opts=opts,
    )
    service = k8s.core.v1.Service(
        f"{name}-redis-service",
        metadata={"name": f"{prefix}-redis", "namespace": ns_name, "labels": labels},
        spec={"type": "ClusterIP", "selector": dict(REDIS_LABELS),
              "ports": [{"name": "redis", "port": REDIS_PORT, "targetPort": "redis", "protocol": "TCP"}]},
        opts=opts,
    )
    return deployment, service
