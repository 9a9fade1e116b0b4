"""The chat service on Kubernetes: ConfigMap, data volume, the stable Deployment and a canary beside it, Service :18789,
metrics Service, PDB, Redis, TLS, and the Secret holding the conversation database URL."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import pulumi
import pulumi_kubernetes as k8s

from infra.chat_pod import (
    CONTAINER_SECURITY,
    PodInputs,
    Release,
    canary_release,
    config_checksum,
    database_digest,
    deployment_spec,
    stable_release,
)
from infra.contract import (
    API_KEY_PATH,
    CHAT_LABELS,
    COMMON_LABELS,
    DATA_DIR,
    DATABASE_SECRET_KEY,
    KEK_PATH,
    METRICS_PORT,
    METRICS_PORT_NAME,
    METRICS_SERVICE_LABELS,
    PORT,
    PORT_NAME,
    REDIS_LABELS,
    REDIS_PORT,
    TLS_CERT_PATH,
    TLS_KEY_PATH,
)
from infra.gpu_node_pool import PodPlacement
from infra.load_balancer import endpoint_url, load_balancer_hostname, load_balancer_spec, service_annotations
from infra.secret_store import SecretNames
from infra.settings import StackSettings

CERT_MANAGER_API = "cert-manager.io/v1"
# What a first rollout needs beyond the startup probe's budget: Karpenter launching a GPU node, the CUDA image
# pull, and the NLB registering the pod. Pulumi's default 10-minute await is far below a first prod rollout.
PROVISIONING_BUDGET_S = 1200


def service_env(settings: StackSettings, redis_url: str | None) -> dict[str, str]:
    """The non-secret environment of the chat container; every name is one app.settings.ENV_VARS reads."""
    env = {
        "APP_ENV": settings.environment,
        "HOST": "0.0.0.0",
        "PORT": str(PORT),
        "METRICS_PORT": str(METRICS_PORT),
        "MODEL_PATH": settings.model_path,
        "QUANTIZATION": settings.quantization,
        "DTYPE": settings.dtype,
        "PREFIX_CACHE_TOKENS": str(settings.prefix_cache_tokens),
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
        "SHUTDOWN_GRACE_SECONDS": str(settings.shutdown_grace_seconds),
    }
    if settings.tls.in_pod:
        env["TLS_CERT_FILE"] = TLS_CERT_PATH
        env["TLS_KEY_FILE"] = TLS_KEY_PATH
    if settings.data_access_mode == "ReadWriteMany" and not settings.database.configured:
        # Replicas on several nodes share /app/data: SQLite's WAL index lives in shared memory of one host,
        # so the conversation store uses the rollback journal and file locks instead.
        env["CONVERSATION_JOURNAL"] = "delete"
    if settings.network.trusted_proxies:
        env["TRUSTED_PROXIES"] = ",".join(settings.network.trusted_proxies)
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


def rollout_timeouts(settings: StackSettings) -> pulumi.CustomTimeouts:
    """How long `pulumi up` waits for the Deployment and its Service: the startup probe's budget plus provisioning."""
    wait = f"{settings.startup_timeout_seconds + PROVISIONING_BUDGET_S}s"
    return pulumi.CustomTimeouts(create=wait, update=wait)


@dataclass
class ChatServiceArgs:
    settings: StackSettings
    namespace: pulumi.Input[str]
    placement: PodPlacement
    secrets: SecretNames
    # The key Secrets the pods mount, and a digest of their content: the Deployment waits for them and rolls on change.
    key_secrets: Sequence[pulumi.Resource] = field(default_factory=tuple)
    secrets_digest: pulumi.Input[str] = ""
    # The conversation database URL (a secret Output) when one is configured, and a secret key to digest it with.
    database_url: pulumi.Output[str] | None = None
    digest_key: pulumi.Input[str] = ""
    name_prefix: str = "clawbot"


class ChatService(pulumi.ComponentResource):
    namespace: pulumi.Output[str]
    deployment_name: pulumi.Output[str]
    data_claim_name: str
    database_secret_name: str | None
    service_name: pulumi.Output[str]
    endpoint_url: pulumi.Output[str]
    load_balancer_hostname: pulumi.Output[str]

    def __init__(self, name: str, args: ChatServiceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("clawbot:infra:ChatService", name, None, opts)
        s, prefix, ns_name = args.settings, args.name_prefix, args.namespace
        labels = {**CHAT_LABELS, **COMMON_LABELS}
        in_ns = pulumi.ResourceOptions(parent=self)

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

        self.pvc = k8s.core.v1.PersistentVolumeClaim(
            f"{name}-data",
            metadata={"name": f"{prefix}-data", "namespace": ns_name, "labels": labels},
            spec={
                "accessModes": [s.data_access_mode],
                "storageClassName": s.storage_class,
                "resources": {"requests": {"storage": s.data_volume_size}},
            },
            # The model cache and the conversations: `pulumi destroy` leaves the claim, and production refuses to
            # delete it at all until someone runs `pulumi state unprotect` on purpose.
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True, protect=s.production),
        )
        # A restore makes a new claim from a snapshot and points the pods at it; the original claim stays as it was.
        self.data_claim_name = s.backups.data_claim(f"{prefix}-data")
        self.restored_pvc = None
        if s.backups.restore_snapshot:
            self.restored_pvc = k8s.core.v1.PersistentVolumeClaim(
                f"{name}-data-restored",
                metadata={"name": self.data_claim_name, "namespace": ns_name, "labels": labels},
                spec={
                    "accessModes": [s.data_access_mode],
                    "storageClassName": s.storage_class,
                    "resources": {"requests": {"storage": s.data_volume_size}},
                    "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                                   "name": s.backups.restore_snapshot},
                },
                # Restoring from another snapshot later leaves this claim in the cluster, as destroy does.
                opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True),
            )

        self.certificate = None
        tls_secret = None
        if s.tls.pod_secret:
            tls_secret = s.tls.pod_secret
        elif s.tls.pod_issuer_name:
            tls_secret = f"{prefix}-tls"
            self.certificate = _certificate(name, prefix, s, ns_name, tls_secret, in_ns)

        waits_for: list[pulumi.Resource] = [self.config_map, self.pvc, *args.key_secrets]
        if self.restored_pvc is not None:
            waits_for.append(self.restored_pvc)
        if self.certificate is not None:
            waits_for.append(self.certificate)
        self.database_secret = None
        self.database_secret_name = None
        secrets_digest = args.secrets_digest
        if args.database_url is not None:
            self.database_secret_name = f"{prefix}-database"
            self.database_secret = k8s.core.v1.Secret(
                f"{name}-database",
                metadata={"name": self.database_secret_name, "namespace": ns_name, "labels": labels},
                type="Opaque",
                string_data={DATABASE_SECRET_KEY: args.database_url},
                opts=in_ns,
            )
            waits_for.append(self.database_secret)
            # The URL reaches the pods as env, read once at start: a new URL (a rotated password) must roll them.
            secrets_digest = database_digest(args.secrets_digest, args.digest_key, args.database_url)

        pod = PodInputs(settings=s, placement=args.placement, secrets=args.secrets, config_map_name=f"{prefix}-config",
                        claim_name=self.data_claim_name, tls_secret_name=tls_secret, database_secret_name=self.database_secret_name)
        checksum = config_checksum(self.env, secrets_digest)

        def deployment(suffix: str, deployment_name: str, release: Release) -> k8s.apps.v1.Deployment:
            return k8s.apps.v1.Deployment(
                f"{name}-{suffix}",
                metadata={"name": deployment_name, "namespace": ns_name, "labels": release.labels,
                          **({"annotations": release.annotations} if release.annotations else {})},
                spec=deployment_spec(pod, release, checksum),
                opts=pulumi.ResourceOptions(parent=self, depends_on=waits_for, custom_timeouts=rollout_timeouts(s)),
            )

        self.deployment = deployment("deployment", prefix, stable_release(s))
        # The canary runs beside the stable set behind the same Service; the HPA scales the stable set only.
        canary = canary_release(s)
        self.canary_deployment = deployment("canary-deployment", f"{prefix}-canary", canary) if canary else None

        self.service = k8s.core.v1.Service(
            f"{name}-service",
            metadata={"name": prefix, "namespace": ns_name, "labels": labels, "annotations": service_annotations(s)},
            spec={
                "type": s.network.service_type,
                "selector": dict(CHAT_LABELS),
                "ports": [{"name": PORT_NAME, "port": PORT, "targetPort": PORT_NAME, "protocol": "TCP"}],
                **load_balancer_spec(s),
            },
            # Pulumi waits for the load balancer's address and a ready endpoint, i.e. the first pod's model load.
            # loadBalancerClass cannot change in place.
            opts=pulumi.ResourceOptions(parent=self, custom_timeouts=rollout_timeouts(s),
                                        replace_on_changes=["spec.loadBalancerClass"]),
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

        self.namespace = pulumi.Output.from_input(ns_name)
        self.deployment_name = self.deployment.metadata["name"]
        self.service_name = self.service.metadata["name"]
        self.endpoint_url = endpoint_url(self.service, s)
        self.load_balancer_hostname = load_balancer_hostname(self.service, s)
        self.register_outputs({"namespace": self.namespace, "endpointUrl": self.endpoint_url})


def _certificate(
    name: str, prefix: str, s: StackSettings, ns_name: pulumi.Input[str], secret_name: str, opts: pulumi.ResourceOptions
) -> k8s.apiextensions.CustomResource:
    """A cert-manager Certificate for the Service's names (and endpointHostname); cert-manager renews it, the app reloads."""
    dns_names = [f"{prefix}.{s.namespace}.svc", f"{prefix}.{s.namespace}.svc.cluster.local"]
    if s.tls.endpoint_hostname:
        dns_names.insert(0, s.tls.endpoint_hostname)
    return k8s.apiextensions.CustomResource(
        f"{name}-certificate",
        api_version=CERT_MANAGER_API,
        kind="Certificate",
        metadata={"name": f"{prefix}-tls", "namespace": ns_name, "labels": {**CHAT_LABELS, **COMMON_LABELS}},
        spec={
            "secretName": secret_name,
            "issuerRef": {"group": "cert-manager.io", "kind": s.tls.pod_issuer_kind, "name": s.tls.pod_issuer_name},
            "dnsNames": dns_names,
            "duration": "2160h",
            "renewBefore": "720h",
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "usages": ["server auth", "digital signature"],
        },
        opts=opts,
    )


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
