"""The rules that tie two topics together, in one place: each topic parser checks only its own keys.

`parse_settings` runs STACK_CHECKS once every topic has parsed; `load_settings` runs the secret checks once the
secret config values are read.
"""
from __future__ import annotations

from typing import Callable

from infra.settings.data import DATABASE_URL_KEY
from infra.settings.keys import CANARY_KEY
from infra.settings.pod import ROLLOUT_SURGE
from infra.settings.stack import StackSettings
from infra.settings.values import ConfigError, config_key as key, duration_seconds, go_duration


def public_ingress_is_deliberate(s: StackSettings) -> None:
    """environment x network: production opens 18789 to the internet only when asked to on purpose."""
    open_ones = s.network.open_cidrs
    if s.production and open_ones and not s.network.allow_public_ingress:
        raise ConfigError(
            f"{key('allowedCidrs')} contains {', '.join(open_ones)}, which opens port 18789 to the whole internet; "
            f"a production stack allows that only with {key('allowPublicIngress')}: true set on purpose"
        )


def load_balancer_certificate_has_a_load_balancer(s: StackSettings) -> None:
    """tls x network: an ACM certificate is the NLB listener's."""
    if s.tls.at_load_balancer and not s.network.load_balanced:
        raise ConfigError(f"{key('tlsCertificateArn')} needs {key('serviceType')} LoadBalancer (it is the NLB's listener "
                          f"certificate); for TLS inside the cluster use {key('podTlsIssuer')} or {key('podTlsSecret')}")


def production_serves_tls(s: StackSettings) -> None:
    """environment x tls: API keys and tokens cross the network."""
    if s.production and not s.tls.enabled and not s.tls.allow_plaintext:
        raise ConfigError(
            f"a production stack must serve TLS: API keys and tokens cross the network. Set {key('tlsCertificateArn')} "
            f"(TLS at the load balancer) or {key('podTlsIssuer')}/{key('podTlsSecret')} (TLS in the pod), or set "
            f"{key('allowPlaintext')}: true on purpose"
        )


def gpu_limit_covers_a_rollout(s: StackSettings) -> None:
    """gpu x scaling x release: a rolling update adds one pod (maxSurge) before it removes one; at maxReplicas that
    pod needs GPUs beyond the replicas', or it stays Pending and the rollout never finishes. A canary's pods need
    GPUs of their own on top."""
    gpu, max_replicas = s.gpu, s.scaling.max_replicas
    canary_pods = s.release.canary.replicas if s.release.canary else 0
    rollout_gpus = gpu.gpus_per_pod * (max_replicas + ROLLOUT_SURGE + canary_pods)
    if gpu.mode == "karpenter" and rollout_gpus > gpu.gpu_limit:
        canary_part = f" + {canary_pods} {key(CANARY_KEY)} pod{'s' if canary_pods > 1 else ''}" if canary_pods else ""
        raise ConfigError(
            f"{key('gpuLimit')} ({gpu.gpu_limit}) is below {key('gpusPerPod')} x ({key('maxReplicas')} + {ROLLOUT_SURGE} "
            f"rollout surge pod{canary_part}) = {rollout_gpus}; a rollout at {max_replicas} replicas would wait forever for a GPU. "
            f"Raise {key('gpuLimit')} to {rollout_gpus} or lower {key('maxReplicas')}"
        )


def data_volume_reaches_every_replica(s: StackSettings) -> None:
    """data x scaling: a ReadWriteOnce volume attaches to one node."""
    max_replicas = s.scaling.max_replicas
    if s.data_volume.access_mode == "ReadWriteOnce" and max_replicas > 1:
        raise ConfigError(
            f"{key('dataAccessMode')} ReadWriteOnce cannot serve {key('maxReplicas')} {max_replicas}: pods on a second node "
            "would wait forever for the volume; use ReadWriteMany (a shared-filesystem storageClass) or maxReplicas 1"
        )


def quantization_has_a_gpu(s: StackSettings) -> None:
    """model x gpu: nf4 is bitsandbytes, CUDA only; int8 runs on CPU nodes too (torch's weight-only int8 kernel)."""
    if s.model.quantization == "nf4" and not s.gpu.enabled:
        raise ConfigError(
            f"{key('quantization')} {s.model.quantization!r} needs a GPU (bitsandbytes); set {key('gpuMode')} to karpenter "
            "or existing, or quantization to auto or gguf (a GGUF's own 4-bit blocks), int8 (CPU weight-only int8) or none"
        )


# -- the key store and backups (docs/operations/keys.md, docs/operations/backups.md) --------------------------------


def production_keeps_the_kek_in_kms(s: StackSettings) -> None:
    """environment x key store: a KEK in the cluster, however fenced, is readable by whoever can run the pods."""
    if s.production and not s.key_store.uses_kms:
        raise ConfigError(
            f"a production stack must keep the key-encryption key in AWS KMS: set {key('keyEncryption')} kms and "
            f"{key('kmsDataKey')} (`python -m app.keys kms-data-key --kms-key-id <KMS key ARN>`); "
            f"{key('keyEncryption')} {s.key_store.encryption} keeps it in the cluster"
        )


def production_reaches_kms_privately(s: StackSettings) -> None:
    """environment x key store x network: the chat pods reach nothing outside the cluster but the KMS endpoint."""
    kms = s.key_store.kms
    if s.production and kms is not None and not kms.egress_cidrs:
        raise ConfigError(f"{key('kmsEgressCidrs')} must list the CIDRs of the KMS VPC endpoint (and, with "
                          f"{key('kmsRoleArn')}, the STS endpoint) in production: the chat pods reach nothing else outside "
                          "the cluster")


def production_encrypts_cluster_secrets(s: StackSettings) -> None:
    """environment x key store: the key Secrets sit in etcd; EKS must envelope-encrypt them with a KMS key."""
    if s.production and not s.key_store.cluster_secrets_key_arn:
        raise ConfigError(
            f"a production stack must declare {key('clusterSecretsKeyArn')}, the KMS key EKS encrypts Kubernetes Secrets "
            "with: `aws eks describe-cluster --name <cluster> --query 'cluster.encryptionConfig[0].provider.keyArn'` "
            "prints it; a cluster without one needs `aws eks associate-encryption-config` first (docs/operations/keys.md)"
        )


def production_backups_leave_the_cluster(s: StackSettings) -> None:
    """environment x data: a dump on the cluster's own file system goes down with it."""
    if s.production and s.backups.bucket is None:
        raise ConfigError(
            f"a production stack must copy its backups out of the cluster: set {key('backupBucket')} "
            f"(s3://BUCKET/PREFIX) and {key('backupBucketRegion')}; the bucket is made outside the program "
            "(docs/operations/backups.md)"
        )


# -- the GPU pool's drains, the model download (issue 21: Karpenter, serving pods offline) -------------------------


def node_drain_outlasts_pod_restarts(s: StackSettings) -> None:
    """gpu x pod: Karpenter drains a drifted or consolidated node respecting the PDB, which lets one chat pod go at a
    time and waits for it to be back (its start-up) before the next. Once nodeTerminationGracePeriod runs out it
    deletes the pods left regardless, so it must outlast every pod restart the budget's nodes wait through."""
    gpu, pod = s.gpu, s.pod
    if gpu.mode != "karpenter":
        return
    grace = duration_seconds(gpu.termination_grace_period) or 0
    per_pod = pod.startup_timeout_seconds + pod.termination_grace_seconds
    needed = gpu.disruption_budget * per_pod
    if grace < needed:
        raise ConfigError(
            f"{key('nodeTerminationGracePeriod')} ({gpu.termination_grace_period}) is shorter than {key('disruptionBudget')} "
            f"({gpu.disruption_budget}) x ({key('startupTimeoutSeconds')} {pod.startup_timeout_seconds}s + the pod's "
            f"termination grace {pod.termination_grace_seconds}s from {key('preStopSleepSeconds')} and "
            f"{key('shutdownGraceSeconds')}) = {go_duration(needed)}: a drain would delete chat pods while the PDB still "
            f"waits for a restarted one to load its model, taking two down at once. Set {key('nodeTerminationGracePeriod')} "
            f"to {go_duration(needed)} or more"
        )


def model_download_has_egress(s: StackSettings) -> None:
    """model x network: a hub model is fetched by the download Job, which reaches only what the network settings name."""
    hub = s.network.model_hub
    if not s.model.from_hub or hub.configured:
        return
    if hub.by_name:
        raise ConfigError(f"{key('modelPath')} {s.model.path!r} is a hub id, but {key('modelHubHosts')} is empty, so the "
                          "model download Job could reach no host; name the hub's hosts (huggingface.co, *.hf.co)")
    raise ConfigError(
        f"{key('modelPath')} {s.model.path!r} is a hub id, which the model download Job fetches into the data volume, but "
        f"{key('modelHubEgressCidrs')} is empty, so it could reach nothing. Set {key('modelHubEgressCidrs')} (e.g. "
        f"[0.0.0.0/0]: private ranges stay excluded), {key('modelHubProxy')} with the proxy's addresses, or "
        f"{key('ciliumPolicies')}: true to admit {key('modelHubHosts')} by name; or serve a model already on the volume"
    )


STACK_CHECKS: tuple[Callable[[StackSettings], None], ...] = (
    public_ingress_is_deliberate,
    load_balancer_certificate_has_a_load_balancer,
    production_serves_tls,
    gpu_limit_covers_a_rollout,
    data_volume_reaches_every_replica,
    quantization_has_a_gpu,
    production_keeps_the_kek_in_kms,
    production_reaches_kms_privately,
    production_encrypts_cluster_secrets,
    production_backups_leave_the_cluster,
    # issue 21: the GPU pool's drains, the model download
    node_drain_outlasts_pod_restarts,
    model_download_has_egress,
)


def check_stack(s: StackSettings) -> None:
    for check in STACK_CHECKS:
        check(s)


# -- checks that need the secret config values ------------------------------------------------------------------


def database_serves_every_replica(s: StackSettings) -> None:
    """environment x scaling x data: several production replicas share the conversations, and SQLite on a shared
    volume serialises them."""
    max_replicas = s.scaling.max_replicas
    if s.production and max_replicas > 1 and not s.database.configured:
        raise ConfigError(
            f"a production stack with {key('maxReplicas')} {max_replicas} needs a conversation database: set the secret "
            f"{key(DATABASE_URL_KEY)} (`pulumi config set --secret {DATABASE_URL_KEY} postgresql://USER:PASSWORD@HOST:5432/DB`) "
            f"and {key('databaseEgressCidrs')}, or set {key('maxReplicas')} to 1 to keep SQLite"
        )


def hub_token_is_set(s: StackSettings, hub_token_set: bool) -> None:
    if s.model.hub_auth and not hub_token_set:
        raise ConfigError(f"{key('modelHubAuth')} is true but the secret {key('hubToken')} is empty; "
                          "set it with `pulumi config set --secret hubToken`")


def smtp_credentials_pair(s: StackSettings, password_set: bool) -> None:
    """alerts x secret: username and password come as a pair; one without the other fails only when the first alert
    is mailed."""
    if not s.alerts.enabled:
        return
    if s.alerts.smtp_username and not password_set:
        raise ConfigError(
            f"{key('alertSmtpUsername')} is {s.alerts.smtp_username!r} but the secret {key('alertSmtpPassword')} is "
            "empty, so Alertmanager would fail to log in when it mails the first alert; set it with "
            f"`pulumi config set --secret alertSmtpPassword`, or clear {key('alertSmtpUsername')} for a relay without login"
        )
    if password_set and not s.alerts.smtp_username:
        raise ConfigError(f"the secret {key('alertSmtpPassword')} is set but {key('alertSmtpUsername')} is empty; "
                          "set the user it belongs to, or set the password to ''")
