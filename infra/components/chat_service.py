"""The chat service on Kubernetes: the stable Deployment and a canary beside it, their ConfigMap, Service :18789, the
metrics Service, the PDB and the Secret holding the conversation database URL; its parts DataVolume, Redis and
PodCertificate are components of their own, created under it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.components.chat_pod import (
    PodInputs,
    Release,
    canary_release,
    config_checksum,
    database_digest,
    deployment_spec,
    stable_release,
)
from infra.components.data_volume import DataVolume, DataVolumeArgs
from infra.components.gpu_node_pool import PodPlacement
from infra.components.load_balancer import endpoint_url, load_balancer_hostname, load_balancer_spec, service_annotations
from infra.components.model_download import ModelDownload, ModelDownloadArgs
from infra.components.pod_certificate import PodCertificate, PodCertificateArgs
from infra.components.redis import Redis, RedisArgs
from infra.components.rollout import deployment_timeouts, service_timeouts, stable_pods_rolled
from infra.components.secret_store import SecretNames, key_env
from infra.contract import (
    API_KEY_PATH,
    CHAT_LABELS,
    COMMON_LABELS,
    DATA_DIR,
    DATABASE_SECRET_KEY,
    HUB_OFFLINE_ENV,
    METRICS_PORT,
    METRICS_PORT_NAME,
    METRICS_SERVICE_LABELS,
    PORT,
    PORT_NAME,
    TLS_CERT_PATH,
    TLS_KEY_PATH,
)
from infra.settings.stack import StackSettings


def service_env(settings: StackSettings, redis_url: str | None) -> dict[str, str]:
    """The non-secret environment of the chat container; every name is one app.settings.ENV_VARS reads."""
    env = {
        "APP_ENV": settings.environment,
        "HOST": "0.0.0.0",
        "PORT": str(PORT),
        "METRICS_PORT": str(METRICS_PORT),
        "MODEL_PATH": settings.model.path,
        "QUANTIZATION": settings.model.quantization,
        "DTYPE": settings.model.dtype,
        "PREFIX_CACHE_TOKENS": str(settings.model.prefix_cache_tokens),
        "MAX_TOKENS": str(settings.model.max_tokens),
        "MAX_BATCH_SIZE": str(settings.model.max_batch_size),
        "DATA_DIR": DATA_DIR,
        "API_KEY_PATH": API_KEY_PATH,
        **key_env(settings.key_store),
        "JWT_TTL_SECONDS": str(settings.access.jwt_ttl_seconds),
        "RATE_LIMIT_PER_KEY": str(settings.access.rate_limit_per_key),
        # The app flags a key as abnormal at the same rate the alert fires on.
        "ABNORMAL_KEY_PER_MINUTE": str(settings.alerts.key_requests_per_minute),
        "ALLOWED_CIDRS": ",".join(settings.network.allowed_cidrs),
        "SHUTDOWN_GRACE_SECONDS": str(settings.pod.shutdown_grace_seconds),
        # The chat pods have no way out of the cluster: a hub model comes from the download Job's copy on the volume.
        HUB_OFFLINE_ENV: "1",
    }
    if settings.tls.in_pod:
        env["TLS_CERT_FILE"] = TLS_CERT_PATH
        env["TLS_KEY_FILE"] = TLS_KEY_PATH
    if settings.data_volume.access_mode == "ReadWriteMany" and not settings.database.configured:
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
    namespace: pulumi.Input[str]
    placement: PodPlacement
    secrets: SecretNames
    # The key Secrets the pods mount, and a digest of their content: the Deployment waits for them and rolls on change.
    key_secrets: Sequence[pulumi.Resource] = field(default_factory=tuple)
    secrets_digest: pulumi.Input[str] = ""
    # The conversation database URL (a secret Output) when one is configured, and a secret key to digest it with.
    database_url: pulumi.Output[str] | None = None
    digest_key: pulumi.Input[str] = ""
    # With modelHubAuth: the model hub's read token (a secret Output), for the download Job alone.
    hub_token: pulumi.Output[str] | None = None
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
        s, prefix = args.settings, args.name_prefix
        self.name, self.args = name, args
        self.labels = {**CHAT_LABELS, **COMMON_LABELS}
        part = pulumi.ResourceOptions(parent=self)

        self.redis = None
        if s.redis.enabled:
            self.redis = Redis(
                f"{name}-redis",
                RedisArgs(
                    namespace=args.namespace, namespace_name=s.namespace, image=s.redis.image, name_prefix=prefix
                ),
                opts=part,
            )
        self.env = service_env(s, self.redis.url if self.redis else None)
        self.config_map = k8s.core.v1.ConfigMap(
            f"{name}-config", metadata=self._metadata(f"{prefix}-config"), data=self.env, opts=part
        )
        self.data = DataVolume(
            f"{name}-data",
            DataVolumeArgs(
                namespace=args.namespace,
                claim_name=f"{prefix}-data",
                volume=s.data_volume,
                restore_snapshot=s.backups.restore_snapshot,
                protect=s.production,
                labels=self.labels,
            ),
            opts=part,
        )
        self.data_claim_name = self.data.mounted_claim_name
        self.model_download = None
        if s.model.from_hub:
            claims = [c for c in (self.data.claim, self.data.restored_claim) if c is not None]
            self.model_download = ModelDownload(
                f"{name}-model",
                ModelDownloadArgs(
                    settings=s,
                    namespace=args.namespace,
                    claim_name=self.data_claim_name,
                    placement=args.placement,
                    hub_token=args.hub_token,
                    depends_on=tuple(claims),
                    name_prefix=prefix,
                ),
                opts=part,
            )
        self.certificate = None
        if s.tls.pod_certificate:
            self.certificate = PodCertificate(
                f"{name}-certificate",
                PodCertificateArgs(
                    namespace=args.namespace,
                    namespace_name=s.namespace,
                    service_name=prefix,
                    issuer_kind=s.tls.pod_issuer_kind,
                    issuer_name=s.tls.pod_issuer_name,
                    create_private_ca=s.tls.pod_issuer_created,
                    private_ca=s.tls.pod_issuer_private,
                    endpoint_hostname=s.tls.endpoint_hostname,
                    name_prefix=prefix,
                ),
                opts=part,
            )
        self.database_secret = self._database_secret()
        self.database_secret_name = f"{prefix}-database" if self.database_secret else None

        self.deployment, self.canary_deployment = self._deployments()
        self.service = self._service()
        # Prometheus scrapes this ClusterIP Service; the LoadBalancer above never carries the metrics port.
        self.metrics_service = k8s.core.v1.Service(
            f"{name}-metrics-service",
            metadata={**self._metadata(f"{prefix}-metrics"), "labels": {**COMMON_LABELS, **METRICS_SERVICE_LABELS}},
            spec={
                "type": "ClusterIP",
                "selector": dict(CHAT_LABELS),
                "ports": [
                    {
                        "name": METRICS_PORT_NAME,
                        "port": METRICS_PORT,
                        "targetPort": METRICS_PORT_NAME,
                        "protocol": "TCP",
                    }
                ],
            },
            opts=part,
        )
        # maxUnavailable 1 lets a node drain proceed with one replica and never takes two away at once.
        self.pdb = k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata=self._metadata(prefix),
            spec={"maxUnavailable": 1, "selector": {"matchLabels": dict(CHAT_LABELS)}},
            opts=part,
        )

        self.namespace = pulumi.Output.from_input(args.namespace)
        self.deployment_name = self.deployment.metadata["name"]
        self.service_name = self.service.metadata["name"]
        self.endpoint_url = endpoint_url(self.service, s)
        self.load_balancer_hostname = load_balancer_hostname(self.service, s)
        self.register_outputs({"namespace": self.namespace, "endpointUrl": self.endpoint_url})

    def _metadata(self, object_name: str) -> dict[str, Any]:
        return {"name": object_name, "namespace": self.args.namespace, "labels": self.labels}

    def _database_secret(self) -> k8s.core.v1.Secret | None:
        """The conversation database URL as a Secret the pods read one key of; None without a database."""
        if self.args.database_url is None:
            return None
        return k8s.core.v1.Secret(
            f"{self.name}-database",
            metadata=self._metadata(f"{self.args.name_prefix}-database"),
            type="Opaque",
            string_data={DATABASE_SECRET_KEY: self.args.database_url},
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _deployments(self) -> tuple[k8s.apps.v1.Deployment, k8s.apps.v1.Deployment | None]:
        """The stable Deployment and, with a canary, one beside it behind the same Service (the HPA scales the
        stable set only). Both wait for everything their pods mount, and roll when the env or a secret changes."""
        a, s, prefix = self.args, self.args.settings, self.args.name_prefix
        waits_for: list[pulumi.Resource] = [self.config_map, self.data.claim, *a.key_secrets]
        if self.data.restored_claim is not None:
            waits_for.append(self.data.restored_claim)
        if self.certificate is not None:
            waits_for.append(self.certificate.certificate)  # Ready, through its pulumi.com/waitFor
        if self.model_download is not None:
            waits_for.append(self.model_download.job)  # complete: the model is on the volume
        secrets_digest = a.secrets_digest
        if self.database_secret is not None and a.database_url is not None:
            waits_for.append(self.database_secret)
            # The URL reaches the pods as env, read once at start: a new URL (a rotated password) must roll them.
            secrets_digest = database_digest(a.secrets_digest, a.digest_key, a.database_url)
        tls_secret = s.tls.pod_secret or (self.certificate.secret_name if self.certificate else None)
        pod = PodInputs(
            settings=s,
            placement=a.placement,
            secrets=a.secrets,
            config_map_name=f"{prefix}-config",
            claim_name=self.data_claim_name,
            tls_secret_name=tls_secret,
            database_secret_name=self.database_secret_name,
        )
        checksum = config_checksum(self.env, secrets_digest)

        def deployment(suffix: str, deployment_name: str, release: Release, pods: int) -> k8s.apps.v1.Deployment:
            return k8s.apps.v1.Deployment(
                f"{self.name}-{suffix}",
                metadata={
                    "name": deployment_name,
                    "namespace": a.namespace,
                    "labels": release.labels,
                    **({"annotations": release.annotations} if release.annotations else {}),
                },
                spec=deployment_spec(pod, release, checksum),
                # `up` waits for the rollout to walk through every pod, one at a time.
                opts=pulumi.ResourceOptions(
                    parent=self, depends_on=waits_for, custom_timeouts=deployment_timeouts(s, pods)
                ),
            )

        stable = deployment("deployment", prefix, stable_release(s), stable_pods_rolled(s))
        canary = canary_release(s)
        if canary is None:
            return stable, None
        return stable, deployment("canary-deployment", f"{prefix}-canary", canary, canary.replicas or 1)

    def _service(self) -> k8s.core.v1.Service:
        s = self.args.settings
        return k8s.core.v1.Service(
            f"{self.name}-service",
            metadata={**self._metadata(self.args.name_prefix), "annotations": service_annotations(s)},
            spec={
                "type": s.network.service_type,
                "selector": dict(CHAT_LABELS),
                "ports": [{"name": PORT_NAME, "port": PORT, "targetPort": PORT_NAME, "protocol": "TCP"}],
                **load_balancer_spec(s),
            },
            # Pulumi waits for the load balancer's address and a ready endpoint, i.e. the first pod's model load.
            # loadBalancerClass cannot change in place.
            opts=pulumi.ResourceOptions(
                parent=self, custom_timeouts=service_timeouts(s), replace_on_changes=["spec.loadBalancerClass"]
            ),
        )
