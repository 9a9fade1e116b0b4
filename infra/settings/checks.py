"""The rules that tie two topics together, in one place: each topic parser checks only its own keys.

`parse_settings` runs STACK_CHECKS once every topic has parsed; `load_settings` runs the secret checks once the
secret config values are read.
"""

from __future__ import annotations

from collections.abc import Callable

from infra.settings.data import DATABASE_URL_KEY
from infra.settings.keys import CANARY_KEY
from infra.settings.pod import ROLLOUT_SURGE
from infra.settings.stack import StackSettings
from infra.settings.values import ConfigError, duration_seconds, go_duration
from infra.settings.values import config_key as key


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
        raise ConfigError(
            f"{key('tlsCertificateArn')} needs {key('serviceType')} LoadBalancer (it is the NLB's listener "
            f"certificate); for TLS inside the cluster use {key('podTlsIssuer')} or {key('podTlsSecret')}"
        )


def production_serves_tls(s: StackSettings) -> None:
    """environment x tls: API keys and tokens cross the network."""
    # A Gateway terminates TLS at its HTTPS listener, as the NLB does at its TLS listener (production names it).
    if s.production and not s.tls.enabled and not s.routing.gateway and not s.tls.allow_plaintext:
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
        raise ConfigError(
            f"{key('kmsEgressCidrs')} must list the CIDRs of the KMS VPC endpoint (and, with "
            f"{key('kmsRoleArn')}, the STS endpoint) in production: the chat pods reach nothing else outside "
            "the cluster"
        )


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


# -- the canary's share and the Gateway in front of the pods (issue 21 item 1) ---------------------------------------

# How far the share served may be from canary.weight, in points, at any stable replica count.
CANARY_SHARE_TOLERANCE = 2.0


class CanaryShareError(ConfigError):
    """The traffic path cannot serve the canary's weight; CI then deploys without a canary (infra/tools/canary_share)."""


def canary_share_is_served(s: StackSettings) -> None:
    """release x scaling x routing: the share served is the weight asked for, within CANARY_SHARE_TOLERANCE points, at
    every stable count from minReplicas to maxReplicas. An HTTPRoute's weights give it at any count; the Service
    spreads connections over ready pods, so there the share moves with the stable count."""
    canary = s.release.canary
    if canary is None or canary.split_by_weight:
        return
    low, high = s.scaling.min_replicas, s.scaling.max_replicas
    shares = {n: canary.share_percent(n) for n in range(low, high + 1)}
    if all(abs(share - canary.weight_percent) <= CANARY_SHARE_TOLERANCE for share in shares.values()):
        return
    raise CanaryShareError(
        f"{key(CANARY_KEY)}.weight {canary.weight_percent}% is not a share the chat Service can serve: it spreads "
        f"connections over ready pods, so {service_shares(canary.weight_percent, canary.replicas, low, high)}. Name a "
        f"Gateway ({key('gateway')}: NAMESPACE/NAME) so an HTTPRoute splits requests by weight at every replica count"
    )


def service_shares(weight: int, canary_pods: int, low: int, high: int) -> str:
    """The shares the Service gives a canary of `canary_pods` over the stable range, and what it could give instead."""

    def share(canary: int, stable: int) -> float:
        return round(100 * canary / (canary + stable), 1)

    pods = f"{canary_pods} canary pod{'s' if canary_pods > 1 else ''}"
    if low != high:
        return (
            f"{pods} serve{'s' if canary_pods == 1 else ''} {share(canary_pods, low):g}% beside {low} stable pods and "
            f"{share(canary_pods, high):g}% beside {high}: no one share while the HPA moves the stable set between "
            f"them (only with {key('minReplicas')} = {key('maxReplicas')})"
        )
    options = sorted({share(c, low) for c in range(1, low + 1)}, key=lambda x: abs(x - weight))[:2]
    return (
        f"beside {low} stable pod{'s' if low > 1 else ''} it can give "
        f"{' or '.join(f'{x:g}%' for x in sorted(options))} (set {key(CANARY_KEY)}.weight to "
        f"{'one of them' if len(options) > 1 else 'that'})"
    )


def gateway_is_the_only_way_in(s: StackSettings) -> None:
    """routing x network: with a Gateway, clients reaching an NLB of the chat Service would bypass the route's weights."""
    if s.routing.gateway and s.network.load_balanced:
        raise ConfigError(
            f"{key('gateway')} {s.routing.gateway_namespace}/{s.routing.gateway_name} is the way in, but "
            f"{key('serviceType')} LoadBalancer gives the chat pods a second one, where a canary's share is a count of "
            f"pods, not the route's weight; set {key('serviceType')} ClusterIP (the Gateway's own load balancer faces "
            f"the clients), or remove {key('gateway')}"
        )


def gateway_routes_a_hostname(s: StackSettings) -> None:
    """routing x tls: the route matches the name clients use, and the endpoint URL is that name."""
    if s.routing.gateway and not s.tls.endpoint_hostname:
        raise ConfigError(
            f"{key('gateway')} needs {key('endpointHostname')}: the HTTPRoute answers for that name on "
            "the Gateway, and endpointUrl is https://<endpointHostname>"
        )


def gateway_forwards_client_addresses(s: StackSettings) -> None:
    """routing x network: behind a Gateway the pods see its addresses; ALLOWED_CIDRS then needs X-Forwarded-For."""
    if s.routing.gateway and s.network.allowed_cidrs and not s.network.trusted_proxies:
        raise ConfigError(
            f"with {key('gateway')} the chat pods see the Gateway's addresses, not the clients': {key('allowedCidrs')} "
            f"would refuse every request. Set {key('trustedProxies')} to the CIDRs the Gateway's data plane connects "
            f"from (its pods' subnets, or {key('gatewaySourceCidrs')}), so the app reads the client from X-Forwarded-For"
        )


def gateway_speaks_http_to_the_pods(s: StackSettings) -> None:
    """routing x tls: the Gateway terminates TLS and forwards HTTP; TLS in the pod would need a BackendTLSPolicy."""
    if s.routing.gateway and s.tls.in_pod:
        raise ConfigError(
            f"{key('gateway')} forwards plain HTTP to the chat pods, but {key('podTlsIssuer')}/{key('podTlsSecret')} "
            "makes them serve HTTPS (the program creates no BackendTLSPolicy): TLS terminates at the Gateway's "
            "listener, so remove the pod certificate, or remove the gateway"
        )


def production_gateway_names_its_https_listener(s: StackSettings) -> None:
    """environment x routing: in production the route attaches to one listener, the one that terminates TLS."""
    if s.production and s.routing.gateway and not s.routing.listener:
        raise ConfigError(
            f"a production stack attaches its HTTPRoute to one named listener of {key('gateway')}: set "
            f"{key('gatewayListener')} to the Gateway's HTTPS listener, so API keys never reach a plain HTTP one"
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
        raise ConfigError(
            f"{key('modelPath')} {s.model.path!r} is a hub id, but {key('modelHubHosts')} is empty, so the "
            "model download Job could reach no host; name the hub's hosts (huggingface.co, *.hf.co)"
        )
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
    # issue 21 item 1
    canary_share_is_served,
    gateway_is_the_only_way_in,
    gateway_routes_a_hostname,
    gateway_forwards_client_addresses,
    gateway_speaks_http_to_the_pods,
    production_gateway_names_its_https_listener,
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


def secrets_required(s: StackSettings) -> dict[str, str]:
    """The declared secrets this stack cannot run with empty, each with the reason: what CI must hold for a new stack
    (infra/tools/stack_secrets.py) and what the checks below refuse without."""
    required: dict[str, str] = {}
    if s.model.hub_auth:
        required["hubToken"] = f"{key('modelHubAuth')} is true"
    if s.alerts.enabled and s.alerts.smtp_username:
        required["alertSmtpPassword"] = f"{key('alertSmtpUsername')} is {s.alerts.smtp_username!r}"
    if s.production and s.scaling.max_replicas > 1:
        required[DATABASE_URL_KEY] = (
            f"a production stack with {key('maxReplicas')} {s.scaling.max_replicas} shares its conversations"
        )
    return required


def stack_names_its_cluster(s: StackSettings) -> None:
    """target x the provider's config (issue 21 item 11): `pulumi up -s prod` must not deploy to whichever cluster
    kubectl points at."""
    if not s.target.cluster_named:
        raise ConfigError(
            f"stack {s.stack!r} names no cluster: set kubernetes:context in Pulumi.{s.stack}.yaml to the kubeconfig "
            f"context of its cluster (`aws eks update-kubeconfig --name <cluster> --alias <context>`), or "
            "kubernetes:kubeconfig, so the stack never deploys to whichever cluster kubectl points at"
        )


def hub_token_is_set(s: StackSettings, hub_token_set: bool) -> None:
    if s.model.hub_auth and not hub_token_set:
        raise ConfigError(
            f"{key('modelHubAuth')} is true but the secret {key('hubToken')} is empty; "
            "set it with `pulumi config set --secret hubToken`"
        )


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
        raise ConfigError(
            f"the secret {key('alertSmtpPassword')} is set but {key('alertSmtpUsername')} is empty; "
            "set the user it belongs to, or set the password to ''"
        )
