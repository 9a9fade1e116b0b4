"""Stack configuration: every `clawbot:*` key read once into one frozen, validated StackSettings.

`CONFIG_KEYS` is the single table of keys (type, default, description); `Pulumi.yaml`'s
config schema is held to it by a test. Components never call `pulumi.Config` themselves.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Mapping

import pulumi

from app.settings import APP_ENVS, DTYPES, EMBEDDED_MODEL, QUANTIZATIONS

if TYPE_CHECKING:
    from infra.data_settings import BackupSettings, DatabaseSettings
    from infra.release_settings import CanarySettings

PROJECT = "clawbot"
SERVICE_TYPES = ("LoadBalancer", "ClusterIP")
GPU_MODES = ("karpenter", "existing", "none")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
CAPACITY_TYPES = ("on-demand", "spot", "reserved")
CONSOLIDATION_POLICIES = ("WhenEmpty", "WhenEmptyOrUnderutilized")
PULL_POLICIES = ("IfNotPresent", "Always", "Never")
ACCESS_MODES = ("ReadWriteOnce", "ReadWriteMany")
OPEN_CIDRS = ("0.0.0.0/0", "::/0")
# The AWS Load Balancer Controller's class: the only one whose annotations this program writes.
LOAD_BALANCER_CLASSES = ("service.k8s.aws/nlb",)
LOAD_BALANCER_SCHEMES = ("internal", "internet-facing")
LOAD_BALANCER_TARGET_TYPES = ("ip", "instance")
# Oldest Kubernetes minor the manifests need: lifecycle.preStop.sleep is on by default from 1.30 (beta; GA 1.34).
MIN_KUBERNETES = (1, 30)


class ConfigError(pulumi.RunError, ValueError):
    """A stack config value is missing or out of range; the message names the key, the value and what is allowed."""


@dataclass(frozen=True)
class ConfigKey:
    name: str
    type: str  # the Pulumi.yaml schema type: string, integer, boolean or array (of strings)
    default: Any
    description: str


CONFIG_KEYS: tuple[ConfigKey, ...] = (
    ConfigKey("environment", "string", "development", "production or development: production refuses open ingress and requires mounted key files"),
    ConfigKey("namespace", "string", "clawbot", "Kubernetes namespace for the chat service, its secrets and policies"),
    ConfigKey("image", "string", "ghcr.io/clawbot/clawbot:0.1.0", "Container image of the chat service (pin a tag or digest)"),
    ConfigKey("imagePullPolicy", "string", "IfNotPresent", "IfNotPresent, Always or Never"),
    ConfigKey("modelPath", "string", EMBEDDED_MODEL, "MODEL_PATH: a directory under /app/models or /app/data, a hub id org/name, or the embedded model"),
    ConfigKey("quantization", "string", "auto", "QUANTIZATION: auto (a GGUF keeps its own 4-bit blocks, a Hugging Face model gets nf4 on GPU), gguf, nf4, int8 or none"),
    ConfigKey("dtype", "string", "auto", "DTYPE: compute dtype, auto (bf16 where the GPU or CPU has it), float32, bfloat16 or float16"),
    ConfigKey("prefixCacheTokens", "integer", 8192, "PREFIX_CACHE_TOKENS: prompt-head tokens whose KV is kept per key for reuse (0 turns it off)"),
    ConfigKey("maxTokens", "integer", 2048, "MAX_TOKENS: the most tokens one reply may generate (1..8192)"),
    ConfigKey("maxBatchSize", "integer", 32, "MAX_BATCH_SIZE: rows the batching engine decodes together (1..256)"),
    ConfigKey("jwtTtlSeconds", "integer", 3600, "JWT_TTL_SECONDS: lifetime of tokens issued by /api/auth (30..3600)"),
    ConfigKey("rateLimitPerKey", "integer", 600, "RATE_LIMIT_PER_KEY: requests per minute one API key may make"),
    ConfigKey("modelHubAuth", "boolean", False, "Read a model-hub token from the secret config key hubToken (config set --secret) and seal it in the key file"),
    ConfigKey("minReplicas", "integer", 1, "Fewest chat pods (HPA minimum; the replica count when minReplicas == maxReplicas)"),
    ConfigKey("maxReplicas", "integer", 1, "Most chat pods (HPA maximum); equal to minReplicas disables the HPA"),
    ConfigKey("cpuRequest", "string", "1", "CPU request of the chat container"),
    ConfigKey("cpuLimit", "string", "2", "CPU limit of the chat container"),
    ConfigKey("memoryRequest", "string", "2Gi", "Memory request of the chat container"),
    ConfigKey("memoryLimit", "string", "4Gi", "Memory limit of the chat container"),
    ConfigKey("dataVolumeSize", "string", "100Gi", "Size of the PVC mounted at /app/data (model cache and conversations)"),
    ConfigKey("dataAccessMode", "string", "ReadWriteOnce", "Access mode of the data PVC: ReadWriteOnce (one node) or ReadWriteMany (needed when replicas may land on several nodes)"),
    ConfigKey("storageClass", "string", "", "StorageClass of the data PVC, required (EKS clusters made at 1.30+ have no default class): an EBS class such as gp3 for ReadWriteOnce, an EFS class such as efs-sc for ReadWriteMany"),
    ConfigKey("kubernetesVersion", "string", "1.30", "Kubernetes minor version of the cluster, e.g. 1.33 (kubectl version); 1.30 is the oldest supported"),
    ConfigKey("startupTimeoutSeconds", "integer", 600, "How long the startup probe waits for the model to load before the pod is restarted (60..7200); pulumi up waits this long plus node and image time"),
    ConfigKey("shutdownGraceSeconds", "integer", 25, "SHUTDOWN_GRACE_SECONDS: how long SIGTERM lets accepted requests finish (5..600)"),
    ConfigKey("preStopSleepSeconds", "integer", 5, "Seconds a stopping pod keeps serving before SIGTERM, while the Service and load balancer drop it (0..120)"),
    ConfigKey("serviceType", "string", "ClusterIP", "LoadBalancer (reachable from allowedCidrs) or ClusterIP (in-cluster only)"),
    ConfigKey("allowedCidrs", "array", [], "CIDRs allowed to reach TCP 18789 (NetworkPolicy, loadBalancerSourceRanges, ALLOWED_CIDRS)"),
    ConfigKey("allowPublicIngress", "boolean", False, "Set true on purpose to allow 0.0.0.0/0 or ::/0 in allowedCidrs of a production stack"),
    ConfigKey("loadBalancerClass", "string", "service.k8s.aws/nlb", "LoadBalancer: spec.loadBalancerClass; service.k8s.aws/nlb is the AWS Load Balancer Controller's NLB"),
    ConfigKey("loadBalancerScheme", "string", "internal", "LoadBalancer: internal (VPC only) or internet-facing (set on purpose)"),
    ConfigKey("loadBalancerTargetType", "string", "ip", "LoadBalancer: ip (pods are targets) or instance (nodes are targets)"),
    ConfigKey("preserveClientIp", "boolean", True, "LoadBalancer: pass the client address to the pods, so the NetworkPolicy and ALLOWED_CIDRS see it"),
    ConfigKey("loadBalancerSubnetCidrs", "array", [], "LoadBalancer with ip targets: CIDRs of the subnets the NLB sits in (e.g. the VPC CIDR); its health checks come from there"),
    ConfigKey("tlsCertificateArn", "string", "", "TLS at the load balancer: ACM certificate ARN for a TLS listener on 18789"),
    ConfigKey("endpointHostname", "string", "", "DNS name clients use (the certificate's name); endpointUrl uses it; point it at the loadBalancerHostname output"),
    ConfigKey("podTlsSecret", "string", "", "TLS in the pod: an existing kubernetes.io/tls Secret in the namespace to serve 18789 with"),
    ConfigKey("podTlsIssuer", "string", "", "TLS in the pod: a cert-manager issuer as ClusterIssuer/NAME or Issuer/NAME; a Certificate is created"),
    ConfigKey("allowPlaintext", "boolean", False, "Set true on purpose to run a production stack without TLS"),
    ConfigKey("trustedProxies", "array", [], "TRUSTED_PROXIES: CIDRs of proxies whose X-Forwarded-For the service believes"),
    ConfigKey("monitoringNamespace", "string", "monitoring", "Namespace of Prometheus; it alone may scrape /metrics besides allowedCidrs"),
    ConfigKey("modelHubEgressCidrs", "array", [], "CIDRs the chat pods may reach on TCP 443 to download a model; empty allows no internet egress"),
    ConfigKey("databaseEgressCidrs", "array", [], "CIDRs the conversation database listens on (e.g. the RDS subnets); required with conversationDatabaseUrl"),
    ConfigKey("kubernetesApiCidrs", "array", [], "CIDRs of the Kubernetes API server endpoints the snapshot job may reach on 443/6443; empty allows any address"),
    ConfigKey("redisEnabled", "boolean", False, "Run Redis for the response cache and rate limits shared across replicas (sets REDIS_URL)"),
    ConfigKey("redisImage", "string", "redis:7.4.2-alpine", "Redis image when redisEnabled"),
    ConfigKey("gpuMode", "string", "none", "karpenter (a NodePool for GPU nodes), existing (GPU nodes already in the cluster) or none (CPU)"),
    ConfigKey("gpusPerPod", "integer", 1, "nvidia.com/gpu limit of each chat pod when gpuMode is not none"),
    ConfigKey("gpuInstanceFamilies", "array", ["g5", "g6"], "Karpenter: EC2 instance families for GPU nodes"),
    ConfigKey("gpuInstanceTypes", "array", [], "Karpenter: exact instance types (empty allows any size of the families)"),
    ConfigKey("gpuCapacityTypes", "array", ["on-demand"], "Karpenter: on-demand, spot and/or reserved"),
    ConfigKey("gpuLimit", "integer", 10, "Karpenter: most GPUs the NodePool may provision in total"),
    ConfigKey("gpuTaintKey", "string", "nvidia.com/gpu", "Taint key on GPU nodes (the chat pods get the matching toleration)"),
    ConfigKey("gpuTaintValue", "string", "true", "Taint value on GPU nodes"),
    ConfigKey("gpuTaintEffect", "string", "NoSchedule", "Taint effect on GPU nodes: NoSchedule, PreferNoSchedule or NoExecute"),
    ConfigKey("gpuNodeLabels", "array", ["clawbot.dev/accelerator=nvidia"], "key=value labels of GPU nodes; chat pods require them via node affinity"),
    ConfigKey("gpuOperator", "boolean", False, "true when the NVIDIA GPU operator already runs the device plugin (no DaemonSet is created)"),
    ConfigKey("devicePluginImage", "string", "nvcr.io/nvidia/k8s-device-plugin:v0.17.2", "Image of the NVIDIA device plugin DaemonSet"),
    ConfigKey("nodeClassName", "string", "", "Karpenter: name of an existing EC2NodeClass to use; empty creates one from nodeClassRole"),
    ConfigKey("nodeClassRole", "string", "", "Karpenter: IAM role of the nodes of the created EC2NodeClass"),
    ConfigKey("nodeClassSubnetTags", "array", [], "Karpenter: key=value tags selecting the subnets of the created EC2NodeClass"),
    ConfigKey("nodeClassSecurityGroupTags", "array", [], "Karpenter: key=value tags selecting the security groups of the created EC2NodeClass"),
    ConfigKey("nodeClassAmiAlias", "string", "al2023@latest", "Karpenter: AMI alias of the created EC2NodeClass (the GPU variant is picked for GPU instances)"),
    ConfigKey("nodeVolumeSize", "string", "200Gi", "Karpenter: root volume of GPU nodes (container images with CUDA are large)"),
    ConfigKey("consolidationPolicy", "string", "WhenEmpty", "Karpenter: WhenEmpty or WhenEmptyOrUnderutilized"),
    ConfigKey("consolidateAfter", "string", "10m", "Karpenter: how long a node stays empty/underused before it is consolidated"),
    ConfigKey("nodeExpireAfter", "string", "720h", "Karpenter: node lifetime before replacement"),
    ConfigKey("disruptionBudget", "string", "1", "Karpenter: nodes (or a percentage) that may be disrupted at once"),
    ConfigKey("hpaCpuPercent", "integer", 70, "HPA: target average CPU utilization (10..100)"),
    ConfigKey("hpaInflightPerPod", "integer", 0, "HPA: target clawbot_inflight_requests per pod (needs customMetricsAdapter); 0 disables"),
    ConfigKey("customMetricsAdapter", "boolean", False, "true when prometheus-adapter serves clawbot_inflight_requests on custom.metrics.k8s.io"),
    ConfigKey("scaleDownStabilizationSeconds", "integer", 300, "HPA: how long load must stay low before pods are removed"),
    ConfigKey("alertsEnabled", "boolean", False, "Create the ServiceMonitor, PrometheusRule and AlertmanagerConfig (needs the Prometheus operator)"),
    ConfigKey("alertEmail", "string", "", "Address alerts are mailed to (required when alertsEnabled)"),
    ConfigKey("alertEmailFrom", "string", "clawbot-alerts@localhost", "Sender address of alert mail"),
    ConfigKey("alertSmarthost", "string", "smtp.localhost:587", "SMTP relay host:port for alert mail"),
    ConfigKey("alertSmtpUsername", "string", "", "SMTP user; needs the secret config key alertSmtpPassword"),
    ConfigKey("alertSmtpRequireTls", "boolean", True, "Require STARTTLS to alertSmarthost; false only for a relay on a trusted network"),
    ConfigKey("alertSelectorLabels", "array", ["release=kube-prometheus-stack"], "key=value labels on the ServiceMonitor, PrometheusRule and AlertmanagerConfig; kube-prometheus-stack loads only objects labelled release=<its Helm release name>"),
    ConfigKey("alertGroupWait", "string", "30s", "How long Alertmanager gathers the alerts of a new group before it sends the first mail"),
    ConfigKey("alertCpuPercent", "integer", 85, "Alert when a pod uses more than this % of its CPU limit for alertCpuFor"),
    ConfigKey("alertCpuFor", "string", "5m", "How long CPU must stay above alertCpuPercent before the alert fires"),
    ConfigKey("alertMemoryPercent", "integer", 90, "Alert when a pod uses more than this % of its memory limit for alertMemoryFor"),
    ConfigKey("alertMemoryFor", "string", "1m", "How long memory must stay above alertMemoryPercent before the alert fires"),
    ConfigKey("alertFirstTokenMs", "integer", 2000, "Alert when p95 time to first token exceeds this many milliseconds for alertLatencyFor"),
    ConfigKey("alertTokenLatencyMs", "integer", 250, "Alert when p95 time per output token after the first exceeds this many milliseconds for alertLatencyFor"),
    ConfigKey("alertLatencyFor", "string", "5m", "How long a latency p95 must stay above its threshold before the alert fires"),
    ConfigKey("alertErrorRatePercent", "integer", 5, "Alert when more than this % of requests (probes left out) fail with 5xx over alertErrorRateWindow"),
    ConfigKey("alertErrorRateWindow", "string", "10m", "The window the 5xx share is measured over"),
    ConfigKey("alertKeyRequestsPerMinute", "integer", 1000, "Alert when one API key makes more requests a minute than this (also the app's ABNORMAL_KEY_PER_MINUTE)"),
    ConfigKey("alertKeyWindow", "string", "1m", "The window one key's request rate is averaged over"),
    ConfigKey("alertQueueDepth", "integer", 64, "Alert when requests waiting for a batch slot stay above this for 5m"),
    ConfigKey("alertClockOffsetMs", "integer", 500, "Alert when a node running chat pods is more than this many ms off NTP time for 10m (JWTs tolerate 5 s of skew)"),
    ConfigKey("keyRotationDays", "integer", 90, "Days between rotations of the KEK, API keys and JWT keys (the epoch in the random keepers)"),
    ConfigKey("backupSchedule", "string", "17 3 * * *", "Cron schedule (UTC) of the data-volume snapshot and the database dump"),
    ConfigKey("backupSnapshotClass", "string", "", "VolumeSnapshotClass for daily snapshots of the data volume (its CSI driver must support snapshots; EFS does not); empty takes none"),
    ConfigKey("dataRestoreSnapshot", "string", "", "Restore: a VolumeSnapshot of the data volume; the chat pods then mount a new claim made from it (<snapshot>-restored)"),
    ConfigKey("backupRetention", "integer", 7, "How many snapshots and database dumps are kept (1..90); older ones are deleted"),
    ConfigKey("backupImage", "string", "python:3.13-alpine", "Image of the snapshot job (runs a standard-library Python script against the Kubernetes API)"),
    ConfigKey("databaseBackupImage", "string", "postgres:17-alpine", "Image of the database dump job (pg_dump; its major version must be at least the server's)"),
    ConfigKey("databaseBackupVolumeSize", "string", "20Gi", "Size of the PVC that holds the database dumps"),
)
DEFAULTS: dict[str, Any] = {k.name: k.default for k in CONFIG_KEYS}
# Declared in Pulumi.yaml with `secret: true` and no default (a secret cannot have a plain one), so the CLI refuses
# a stack that lacks them or holds them in plain text; an empty value means "none".
SECRET_KEYS: dict[str, str] = {
    "hubToken": "Model-hub read token (used when modelHubAuth is true); empty for none",
    "alertSmtpPassword": "SMTP password of alertSmtpUsername; empty when the relay needs no login",
    "conversationDatabaseUrl": "PostgreSQL URL of the conversation store (postgresql://USER:PASSWORD@HOST:5432/DB); empty keeps SQLite (one replica)",
}


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str


@dataclass(frozen=True)
class GpuSettings:
    mode: str
    gpus_per_pod: int
    instance_families: tuple[str, ...]
    instance_types: tuple[str, ...]
    capacity_types: tuple[str, ...]
    gpu_limit: int
    taint: Taint
    node_labels: tuple[tuple[str, str], ...]
    gpu_operator: bool
    device_plugin_image: str
    node_class_name: str
    node_class_role: str
    subnet_tags: tuple[tuple[str, str], ...]
    security_group_tags: tuple[tuple[str, str], ...]
    ami_alias: str
    node_volume_size: str
    consolidation_policy: str
    consolidate_after: str
    expire_after: str
    disruption_budget: str

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


@dataclass(frozen=True)
class LoadBalancerSettings:
    load_balancer_class: str
    scheme: str
    target_type: str
    preserve_client_ip: bool
    subnet_cidrs: tuple[str, ...]  # where the NLB's health checks come from (ip targets)


@dataclass(frozen=True)
class NetworkSettings:
    service_type: str
    allowed_cidrs: tuple[str, ...]
    trusted_proxies: tuple[str, ...]
    monitoring_namespace: str
    model_hub_egress_cidrs: tuple[str, ...]
    load_balancer: LoadBalancerSettings

    @property
    def load_balanced(self) -> bool:
        return self.service_type == "LoadBalancer"

    @property
    def health_check_cidrs(self) -> tuple[str, ...]:
        """Sources of the NLB's health checks: its own subnets with ip targets; the node (kube-proxy) otherwise."""
        lb = self.load_balancer
        return lb.subnet_cidrs if self.load_balanced and lb.target_type == "ip" else ()


@dataclass(frozen=True)
class TlsSettings:
    certificate_arn: str  # TLS listener at the NLB
    endpoint_hostname: str
    pod_secret: str  # an existing kubernetes.io/tls Secret
    pod_issuer_kind: str  # cert-manager issuer for a Certificate
    pod_issuer_name: str
    allow_plaintext: bool

    @property
    def at_load_balancer(self) -> bool:
        return bool(self.certificate_arn)

    @property
    def in_pod(self) -> bool:
        return bool(self.pod_secret or self.pod_issuer_name)

    @property
    def enabled(self) -> bool:
        return self.at_load_balancer or self.in_pod


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


@dataclass(frozen=True)
class AlertSettings:
    enabled: bool
    email: str
    email_from: str
    smarthost: str
    smtp_username: str
    smtp_require_tls: bool
    selector_labels: tuple[tuple[str, str], ...]
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


@dataclass(frozen=True)
class StackSettings:
    stack: str
    environment: str
    namespace: str
    image: str
    image_pull_policy: str
    model_path: str
    quantization: str
    dtype: str
    prefix_cache_tokens: int
    max_tokens: int
    max_batch_size: int
    jwt_ttl_seconds: int
    rate_limit_per_key: int
    model_hub_auth: bool
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    data_volume_size: str
    data_access_mode: str
    storage_class: str
    kubernetes_version: tuple[int, int]
    startup_timeout_seconds: int
    shutdown_grace_seconds: int
    pre_stop_sleep_seconds: int
    redis_enabled: bool
    redis_image: str
    key_rotation_days: int
    network: NetworkSettings
    tls: TlsSettings
    gpu: GpuSettings
    scaling: ScalingSettings
    alerts: AlertSettings
    canary: CanarySettings | None
    backups: BackupSettings
    database: DatabaseSettings

    @property
    def production(self) -> bool:
        return self.environment == "production"

    @property
    def termination_grace_seconds(self) -> int:
        """preStop sleep, then SHUTDOWN_GRACE_SECONDS for accepted requests, then a margin for the process to exit."""
        return self.pre_stop_sleep_seconds + self.shutdown_grace_seconds + TERMINATION_MARGIN_S


# After the drain, uvicorn closes its listeners, the engine thread stops and the process exits.
TERMINATION_MARGIN_S = 10


# -- validation helpers ----------------------------------------------------------------------

_CPU = re.compile(r"^(\d+(\.\d+)?)(m?)$")
_MEMORY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti)?$")
_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+s)?$|^Never$")
_MEMORY_UNITS = {None: 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ACM_ARN = re.compile(r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[0-9a-f-]{36}$")
_ISSUER = re.compile(r"^(ClusterIssuer|Issuer)/([a-z0-9]([-a-z0-9.]*[a-z0-9])?)$")
_VERSION = re.compile(r"^(\d+)\.(\d+)\+?$")
ROLLOUT_SURGE = 1  # the Deployment's maxSurge


def _key(name: str) -> str:
    return f"{PROJECT}:{name}"


def _choice(raw: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> str:
    value = raw[name]
    if value not in allowed:
        raise ConfigError(f"{_key(name)} must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _int(raw: Mapping[str, Any], name: str, lo: int, hi: int) -> int:
    value = raw[name]
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value))
        except ValueError:
            raise ConfigError(f"{_key(name)} must be an integer between {lo} and {hi}, got {raw[name]!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{_key(name)} must be between {lo} and {hi}, got {value}")
    return value


def _bool(raw: Mapping[str, Any], name: str) -> bool:
    value = raw[name]
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise ConfigError(f"{_key(name)} must be true or false, got {value!r}")


def _str(raw: Mapping[str, Any], name: str, *, required: bool = False) -> str:
    value = raw[name]
    if not isinstance(value, str):
        raise ConfigError(f"{_key(name)} must be a string, got {value!r}")
    if required and not value.strip():
        raise ConfigError(f"{_key(name)} must not be empty")
    return value


def _strings(raw: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = raw[name]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{_key(name)} must be a list of strings, got {value!r}")
    return tuple(value)


def _cidrs(raw: Mapping[str, Any], name: str) -> tuple[str, ...]:
    out: list[str] = []
    for item in _strings(raw, name):
        try:
            out.append(str(ipaddress.ip_network(item.strip(), strict=True)))
        except ValueError as exc:
            raise ConfigError(f"{_key(name)} must hold CIDRs like 192.168.1.0/24, got {item!r} ({exc})") from None
    return tuple(dict.fromkeys(out))


def _pairs(raw: Mapping[str, Any], name: str) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for item in _strings(raw, name):
        key, sep, value = item.partition("=")
        if not sep or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            raise ConfigError(f"{_key(name)} must hold key=value pairs with Kubernetes label syntax, got {item!r}")
        out.append((key, value))
    return tuple(out)


def cpu_millis(name: str, value: str) -> int:
    m = _CPU.match(value)
    if not m:
        raise ConfigError(f"{_key(name)} must be a CPU quantity like 2 or 500m, got {value!r}")
    return int(float(m.group(1))) if m.group(3) else int(float(m.group(1)) * 1000)


def memory_bytes(name: str, value: str) -> int:
    m = _MEMORY.match(value)
    if not m:
        raise ConfigError(f"{_key(name)} must be a memory quantity like 4Gi or 512Mi, got {value!r}")
    return int(m.group(1)) * _MEMORY_UNITS[m.group(2)]


def _duration(raw: Mapping[str, Any], name: str) -> str:
    value = _str(raw, name, required=True)
    if not _DURATION.match(value):
        raise ConfigError(f"{_key(name)} must be a duration like 10m, 1h30m or 720h, got {value!r}")
    return value


_PROM_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def _prometheus_duration(raw: Mapping[str, Any], name: str, lo_s: int, hi_s: int) -> str:
    """A Prometheus/Alertmanager duration such as 30s, 5m or 1h30m, between lo_s and hi_s seconds."""
    value = _str(raw, name, required=True)
    m = _PROM_DURATION.match(value)
    if not m:
        raise ConfigError(f"{_key(name)} must be a duration like 30s, 5m or 1h30m, got {value!r}")
    h, mi, sec = (int(g or 0) for g in m.groups())
    seconds = 3600 * h + 60 * mi + sec
    if not lo_s <= seconds <= hi_s:
        raise ConfigError(f"{_key(name)} must be between {lo_s}s and {hi_s}s, got {value!r}")
    return value


def _ranged_quantities(raw: Mapping[str, Any]) -> tuple[str, str, str, str]:
    cpu_req, cpu_lim = _str(raw, "cpuRequest"), _str(raw, "cpuLimit")
    mem_req, mem_lim = _str(raw, "memoryRequest"), _str(raw, "memoryLimit")
    req_m, lim_m = cpu_millis("cpuRequest", cpu_req), cpu_millis("cpuLimit", cpu_lim)
    if not 100 <= req_m <= lim_m <= 64_000:
        raise ConfigError(
            f"{_key('cpuRequest')} ({cpu_req}) and {_key('cpuLimit')} ({cpu_lim}) must satisfy 100m <= request <= limit <= 64"
        )
    req_b, lim_b = memory_bytes("memoryRequest", mem_req), memory_bytes("memoryLimit", mem_lim)
    if not 256 * 1024**2 <= req_b <= lim_b <= 1024**4:
        raise ConfigError(
            f"{_key('memoryRequest')} ({mem_req}) and {_key('memoryLimit')} ({mem_lim}) must satisfy 256Mi <= request <= limit <= 1Ti"
        )
    return cpu_req, cpu_lim, mem_req, mem_lim


def _kubernetes_version(raw: Mapping[str, Any]) -> tuple[int, int]:
    text = _str(raw, "kubernetesVersion", required=True).strip()
    m = _VERSION.match(text)
    if not m:
        raise ConfigError(f"{_key('kubernetesVersion')} must be a minor version like 1.33, got {text!r}")
    version = (int(m.group(1)), int(m.group(2)))
    if version < MIN_KUBERNETES:
        raise ConfigError(
            f"{_key('kubernetesVersion')} {text} is older than the oldest supported, {MIN_KUBERNETES[0]}.{MIN_KUBERNETES[1]}: "
            "the chat pods stop with a lifecycle.preStop.sleep hook, which needs 1.30; upgrade the cluster"
        )
    return version


def _load_balancer(raw: Mapping[str, Any], service_type: str, allowed: tuple[str, ...]) -> LoadBalancerSettings:
    lb = LoadBalancerSettings(
        load_balancer_class=_choice(raw, "loadBalancerClass", LOAD_BALANCER_CLASSES),
        scheme=_choice(raw, "loadBalancerScheme", LOAD_BALANCER_SCHEMES),
        target_type=_choice(raw, "loadBalancerTargetType", LOAD_BALANCER_TARGET_TYPES),
        preserve_client_ip=_bool(raw, "preserveClientIp"),
        subnet_cidrs=_cidrs(raw, "loadBalancerSubnetCidrs"),
    )
    if service_type != "LoadBalancer":
        return lb
    if not lb.preserve_client_ip and not all(c in OPEN_CIDRS for c in allowed):
        # Without it the pods see the NLB's own addresses: the ipBlocks drop every client, ALLOWED_CIDRS refuses
        # them, and the controller ignores loadBalancerSourceRanges.
        raise ConfigError(
            f"{_key('preserveClientIp')} false cannot work with {_key('allowedCidrs')} {list(allowed)}: the pods would see "
            f"the load balancer's addresses instead of the clients', so the NetworkPolicy and ALLOWED_CIDRS would refuse "
            f"every client and the controller ignores loadBalancerSourceRanges; set {_key('preserveClientIp')}: true"
        )
    if lb.target_type == "ip" and not lb.subnet_cidrs:
        raise ConfigError(
            f"{_key('loadBalancerSubnetCidrs')} must list the CIDRs of the subnets the NLB sits in (e.g. the VPC CIDR) when "
            f"{_key('loadBalancerTargetType')} is ip: its health checks come from there and the NetworkPolicy must admit them"
        )
    return lb


def _tls(raw: Mapping[str, Any], network: NetworkSettings, production: bool) -> TlsSettings:
    arn = _str(raw, "tlsCertificateArn").strip()
    hostname = _str(raw, "endpointHostname").strip().lower()
    secret = _str(raw, "podTlsSecret").strip()
    issuer = _str(raw, "podTlsIssuer").strip()
    if arn and not _ACM_ARN.match(arn):
        raise ConfigError(f"{_key('tlsCertificateArn')} must be an ACM certificate ARN like "
                          f"arn:aws:acm:us-east-1:123456789012:certificate/<uuid>, got {arn!r}")
    if arn and not network.load_balanced:
        raise ConfigError(f"{_key('tlsCertificateArn')} needs {_key('serviceType')} LoadBalancer (it is the NLB's listener "
                          f"certificate); for TLS inside the cluster use {_key('podTlsIssuer')} or {_key('podTlsSecret')}")
    if arn and not hostname:
        raise ConfigError(f"{_key('endpointHostname')} must name the DNS name on the certificate of {_key('tlsCertificateArn')}: "
                          "clients verify it, and the NLB's own *.elb.amazonaws.com name is not on an ACM certificate")
    if hostname and not _DNS_SUBDOMAIN.match(hostname):
        raise ConfigError(f"{_key('endpointHostname')} must be a DNS name like chat.example.com, got {hostname!r}")
    if secret and issuer:
        raise ConfigError(f"{_key('podTlsSecret')} and {_key('podTlsIssuer')} are two sources of the pod certificate; set one")
    if secret and not _DNS_SUBDOMAIN.match(secret):
        raise ConfigError(f"{_key('podTlsSecret')} must be a Secret name, got {secret!r}")
    issuer_match = _ISSUER.match(issuer) if issuer else None
    if issuer and not issuer_match:
        raise ConfigError(f"{_key('podTlsIssuer')} must be ClusterIssuer/NAME or Issuer/NAME, got {issuer!r}")
    tls = TlsSettings(
        certificate_arn=arn, endpoint_hostname=hostname, pod_secret=secret,
        pod_issuer_kind=issuer_match.group(1) if issuer_match else "", pod_issuer_name=issuer_match.group(2) if issuer_match else "",
        allow_plaintext=_bool(raw, "allowPlaintext"),
    )
    if production and not tls.enabled and not tls.allow_plaintext:
        raise ConfigError(
            f"a production stack must serve TLS: API keys and tokens cross the network. Set {_key('tlsCertificateArn')} "
            f"(TLS at the load balancer) or {_key('podTlsIssuer')}/{_key('podTlsSecret')} (TLS in the pod), or set "
            f"{_key('allowPlaintext')}: true on purpose"
        )
    return tls


# -- parsing ----------------------------------------------------------------------------------


def parse_settings(values: Mapping[str, Any], *, stack: str) -> StackSettings:
    """Validate raw config values (missing keys take DEFAULTS) into StackSettings; raises ConfigError."""
    # These build on this module's helpers, so they are imported once it is loaded.
    from infra.data_settings import parse_backups, parse_database
    from infra.release_settings import CANARY_KEY, STRUCTURED_KEYS, image_setting, parse_canary

    unknown = sorted(set(values) - set(DEFAULTS) - set(SECRET_KEYS) - set(STRUCTURED_KEYS))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(_key(k) for k in unknown)}; allowed keys are listed in Pulumi.yaml")
    raw = {**DEFAULTS, **values}
    environment = _choice(raw, "environment", APP_ENVS)  # the stack environment is the app's APP_ENV
    production = environment == "production"

    namespace = _str(raw, "namespace", required=True)
    monitoring_namespace = _str(raw, "monitoringNamespace", required=True)
    for name, value in (("namespace", namespace), ("monitoringNamespace", monitoring_namespace)):
        if not _DNS_LABEL.match(value):
            raise ConfigError(f"{_key(name)} must be a DNS label (lowercase letters, digits and '-'), got {value!r}")

    allowed = _cidrs(raw, "allowedCidrs")
    allow_public = _bool(raw, "allowPublicIngress")
    open_ones = [c for c in allowed if c in OPEN_CIDRS]
    if production and open_ones and not allow_public:
        raise ConfigError(
            f"{_key('allowedCidrs')} contains {', '.join(open_ones)}, which opens port 18789 to the whole internet; "
            f"a production stack allows that only with {_key('allowPublicIngress')}: true set on purpose"
        )
    service_type = _choice(raw, "serviceType", SERVICE_TYPES)
    if service_type == "LoadBalancer" and not allowed:
        raise ConfigError(
            f"{_key('allowedCidrs')} must list at least one CIDR when {_key('serviceType')} is LoadBalancer "
            "(an empty list would leave the load balancer open to everyone)"
        )
    network = NetworkSettings(
        service_type=service_type,
        allowed_cidrs=allowed,
        trusted_proxies=_cidrs(raw, "trustedProxies"),
        monitoring_namespace=monitoring_namespace,
        model_hub_egress_cidrs=_cidrs(raw, "modelHubEgressCidrs"),
        load_balancer=_load_balancer(raw, service_type, allowed),
    )
    tls = _tls(raw, network, production)

    min_replicas = _int(raw, "minReplicas", 1, 100)
    max_replicas = _int(raw, "maxReplicas", 1, 100)
    if min_replicas > max_replicas:
        raise ConfigError(f"{_key('minReplicas')} ({min_replicas}) must not exceed {_key('maxReplicas')} ({max_replicas})")
    inflight_per_pod = _int(raw, "hpaInflightPerPod", 0, 10_000)
    if inflight_per_pod and not _bool(raw, "customMetricsAdapter"):
        # Without an adapter the HPA cannot read the metric, and with one metric missing it never scales down.
        raise ConfigError(
            f"{_key('hpaInflightPerPod')} {inflight_per_pod} needs a custom-metrics adapter serving clawbot_inflight_requests "
            f"(prometheus-adapter, see the README); install it and set {_key('customMetricsAdapter')}: true, or set "
            f"{_key('hpaInflightPerPod')} to 0 to scale on CPU only"
        )
    scaling = ScalingSettings(
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        cpu_percent=_int(raw, "hpaCpuPercent", 10, 100),
        inflight_per_pod=inflight_per_pod,
        scale_down_stabilization_seconds=_int(raw, "scaleDownStabilizationSeconds", 0, 3600),
    )
    image = image_setting("image", raw["image"], production)
    canary = parse_canary(raw.get(CANARY_KEY), image, scaling, production)
    canary_pods = canary.replicas if canary else 0

    gpu_mode = _choice(raw, "gpuMode", GPU_MODES)
    node_class_name = _str(raw, "nodeClassName")
    node_class_role = _str(raw, "nodeClassRole")
    subnet_tags, sg_tags = _pairs(raw, "nodeClassSubnetTags"), _pairs(raw, "nodeClassSecurityGroupTags")
    if gpu_mode == "karpenter" and not node_class_name:
        missing = [k for k, v in (("nodeClassRole", node_class_role), ("nodeClassSubnetTags", subnet_tags),
                                  ("nodeClassSecurityGroupTags", sg_tags)) if not v]
        if missing:
            raise ConfigError(
                f"{', '.join(_key(k) for k in missing)} must be set when {_key('gpuMode')} is karpenter and no "
                f"{_key('nodeClassName')} names an existing EC2NodeClass"
            )
    capacity = _strings(raw, "gpuCapacityTypes")
    for c in capacity:
        if c not in CAPACITY_TYPES:
            raise ConfigError(f"{_key('gpuCapacityTypes')} entries must be one of {', '.join(CAPACITY_TYPES)}, got {c!r}")
    families, types = _strings(raw, "gpuInstanceFamilies"), _strings(raw, "gpuInstanceTypes")
    if gpu_mode == "karpenter" and not (families or types):
        raise ConfigError(f"{_key('gpuInstanceFamilies')} or {_key('gpuInstanceTypes')} must name GPU instances when {_key('gpuMode')} is karpenter")
    taint_key, taint_value = _str(raw, "gpuTaintKey", required=True), _str(raw, "gpuTaintValue")
    if not _LABEL_KEY.match(taint_key) or not _LABEL_VALUE.match(taint_value):
        raise ConfigError(f"{_key('gpuTaintKey')}/{_key('gpuTaintValue')} must use Kubernetes label syntax, got {taint_key!r}={taint_value!r}")
    node_labels = _pairs(raw, "gpuNodeLabels")
    if gpu_mode == "existing" and not node_labels:
        raise ConfigError(f"{_key('gpuNodeLabels')} must name at least one label of the existing GPU nodes when {_key('gpuMode')} is existing")
    budget = _str(raw, "disruptionBudget", required=True)
    if not re.match(r"^(\d+|\d{1,3}%)$", budget):
        raise ConfigError(f"{_key('disruptionBudget')} must be a node count like 1 or a percentage like 10%, got {budget!r}")
    gpu = GpuSettings(
        mode=gpu_mode,
        gpus_per_pod=_int(raw, "gpusPerPod", 1, 8),
        instance_families=families,
        instance_types=types,
        capacity_types=capacity or ("on-demand",),
        gpu_limit=_int(raw, "gpuLimit", 1, 1000),
        taint=Taint(taint_key, taint_value, _choice(raw, "gpuTaintEffect", TAINT_EFFECTS)),
        node_labels=node_labels,
        gpu_operator=_bool(raw, "gpuOperator"),
        device_plugin_image=_str(raw, "devicePluginImage", required=True),
        node_class_name=node_class_name,
        node_class_role=node_class_role,
        subnet_tags=subnet_tags,
        security_group_tags=sg_tags,
        ami_alias=_str(raw, "nodeClassAmiAlias", required=True),
        node_volume_size=_str(raw, "nodeVolumeSize", required=True),
        consolidation_policy=_choice(raw, "consolidationPolicy", CONSOLIDATION_POLICIES),
        consolidate_after=_duration(raw, "consolidateAfter"),
        expire_after=_duration(raw, "nodeExpireAfter"),
        disruption_budget=budget,
    )
    memory_bytes("nodeVolumeSize", gpu.node_volume_size)
    # A rolling update adds one pod (maxSurge 1) before it removes one; at maxReplicas that pod needs GPUs beyond
    # the replicas', or it stays Pending and the rollout never finishes.
    # A canary's pods need GPUs of their own on top.
    rollout_gpus = gpu.gpus_per_pod * (max_replicas + ROLLOUT_SURGE + canary_pods)
    if gpu_mode == "karpenter" and rollout_gpus > gpu.gpu_limit:
        canary_part = f" + {canary_pods} {_key(CANARY_KEY)} pod{'s' if canary_pods > 1 else ''}" if canary_pods else ""
        raise ConfigError(
            f"{_key('gpuLimit')} ({gpu.gpu_limit}) is below {_key('gpusPerPod')} x ({_key('maxReplicas')} + {ROLLOUT_SURGE} "
            f"rollout surge pod{canary_part}) = {rollout_gpus}; a rollout at {max_replicas} replicas would wait forever for a GPU. "
            f"Raise {_key('gpuLimit')} to {rollout_gpus} or lower {_key('maxReplicas')}"
        )

    alerts_enabled = _bool(raw, "alertsEnabled")
    email = _str(raw, "alertEmail")
    if alerts_enabled and not re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", email):
        raise ConfigError(f"{_key('alertEmail')} must be an e-mail address when {_key('alertsEnabled')} is true, got {email!r}")
    alerts = AlertSettings(
        enabled=alerts_enabled,
        email=email,
        email_from=_str(raw, "alertEmailFrom", required=True),
        smarthost=_str(raw, "alertSmarthost", required=True),
        smtp_username=_str(raw, "alertSmtpUsername"),
        smtp_require_tls=_bool(raw, "alertSmtpRequireTls"),
        selector_labels=_pairs(raw, "alertSelectorLabels"),
        group_wait=_prometheus_duration(raw, "alertGroupWait", 0, 3600),
        cpu_percent=_int(raw, "alertCpuPercent", 1, 100),
        cpu_for=_prometheus_duration(raw, "alertCpuFor", 0, 86400),
        memory_percent=_int(raw, "alertMemoryPercent", 1, 100),
        memory_for=_prometheus_duration(raw, "alertMemoryFor", 0, 86400),
        first_token_ms=_int(raw, "alertFirstTokenMs", 10, 600_000),
        token_latency_ms=_int(raw, "alertTokenLatencyMs", 1, 60_000),
        latency_for=_prometheus_duration(raw, "alertLatencyFor", 0, 86400),
        error_rate_percent=_int(raw, "alertErrorRatePercent", 1, 100),
        error_rate_window=_prometheus_duration(raw, "alertErrorRateWindow", 1, 86400),
        key_requests_per_minute=_int(raw, "alertKeyRequestsPerMinute", 1, 10_000_000),
        key_window=_prometheus_duration(raw, "alertKeyWindow", 1, 86400),
        queue_depth=_int(raw, "alertQueueDepth", 1, 100_000),
        clock_offset_ms=_int(raw, "alertClockOffsetMs", 1, 60_000),
    )

    cpu_req, cpu_lim, mem_req, mem_lim = _ranged_quantities(raw)
    data_size = _str(raw, "dataVolumeSize", required=True)
    if memory_bytes("dataVolumeSize", data_size) < 1024**3:
        raise ConfigError(f"{_key('dataVolumeSize')} must be at least 1Gi (the model cache lives there), got {data_size!r}")
    access_mode = _choice(raw, "dataAccessMode", ACCESS_MODES)
    if access_mode == "ReadWriteOnce" and max_replicas > 1:
        raise ConfigError(
            f"{_key('dataAccessMode')} ReadWriteOnce cannot serve {_key('maxReplicas')} {max_replicas}: pods on a second node "
            "would wait forever for the volume; use ReadWriteMany (a shared-filesystem storageClass) or maxReplicas 1"
        )
    quantization = _choice(raw, "quantization", QUANTIZATIONS)
    # int8 runs on CPU nodes too (torch's weight-only int8 kernel; the fastest one stream there); nf4 is bitsandbytes.
    if quantization == "nf4" and not gpu.enabled:
        raise ConfigError(
            f"{_key('quantization')} {quantization!r} needs a GPU (bitsandbytes); set {_key('gpuMode')} to karpenter or existing, "
            "or quantization to auto or gguf (a GGUF's own 4-bit blocks), int8 (CPU weight-only int8) or none"
        )
    storage_class = _str(raw, "storageClass")
    if not _DNS_SUBDOMAIN.match(storage_class):
        raise ConfigError(
            f"{_key('storageClass')} must name a StorageClass (EKS clusters created at 1.30+ have no default class, so an "
            f"unnamed claim stays Pending), got {storage_class!r}; e.g. gp3 (EBS CSI, ReadWriteOnce) or efs-sc (EFS CSI, ReadWriteMany)"
        )
    kubernetes_version = _kubernetes_version(raw)
    return StackSettings(
        stack=stack,
        environment=environment,
        namespace=namespace,
        image=image,
        image_pull_policy=_choice(raw, "imagePullPolicy", PULL_POLICIES),
        model_path=_str(raw, "modelPath", required=True),
        quantization=quantization,
        dtype=_choice(raw, "dtype", DTYPES),
        prefix_cache_tokens=_int(raw, "prefixCacheTokens", 0, 100_000_000),
        max_tokens=_int(raw, "maxTokens", 1, 8192),
        max_batch_size=_int(raw, "maxBatchSize", 1, 256),
        jwt_ttl_seconds=_int(raw, "jwtTtlSeconds", 30, 3600),
        rate_limit_per_key=_int(raw, "rateLimitPerKey", 1, 1_000_000),
        model_hub_auth=_bool(raw, "modelHubAuth"),
        cpu_request=cpu_req,
        cpu_limit=cpu_lim,
        memory_request=mem_req,
        memory_limit=mem_lim,
        data_volume_size=data_size,
        data_access_mode=access_mode,
        storage_class=storage_class,
        kubernetes_version=kubernetes_version,
        startup_timeout_seconds=_int(raw, "startupTimeoutSeconds", 60, 7200),
        shutdown_grace_seconds=_int(raw, "shutdownGraceSeconds", 5, 600),
        pre_stop_sleep_seconds=_int(raw, "preStopSleepSeconds", 0, 120),
        redis_enabled=_bool(raw, "redisEnabled"),
        redis_image=_str(raw, "redisImage", required=True),
        key_rotation_days=_int(raw, "keyRotationDays", 1, 3650),
        network=network,
        tls=tls,
        gpu=gpu,
        scaling=scaling,
        alerts=alerts,
        canary=canary,
        backups=parse_backups(raw, production),
        database=parse_database(raw),
    )


@dataclass(frozen=True)
class StackSecrets:
    """Secret config values, kept as secret Outputs so they never reach state or logs in plain text."""

    hub_token: pulumi.Output[str] | None
    smtp_password: pulumi.Output[str] | None
    conversation_database_url: pulumi.Output[str] | None


def load_settings(config: pulumi.Config | None = None) -> tuple[StackSettings, StackSecrets]:
    """Read every `clawbot:*` key of the current stack once; the only place that touches pulumi.Config."""
    from infra.data_settings import DATABASE_URL_KEY, database_connection, require_database
    from infra.release_settings import STRUCTURED_KEYS

    config = config or pulumi.Config(PROJECT)
    values: dict[str, Any] = {}
    for key in CONFIG_KEYS:
        if key.type == "array":
            got: Any = config.get_object(key.name)
        elif key.type == "integer":
            got = config.get_int(key.name)
        elif key.type == "boolean":
            got = config.get_bool(key.name)
        else:
            got = config.get(key.name)
        if got is not None:
            values[key.name] = got
    for name in STRUCTURED_KEYS:
        if (structured := config.get_object(name)) is not None:
            values[name] = structured
    settings = parse_settings(values, stack=pulumi.get_stack())
    # Read in plain once, here, to check its shape and port; the program only ever holds it as a secret Output.
    database_url = pulumi.runtime.get_config(f"{config.name}:{DATABASE_URL_KEY}") or None
    settings = replace(settings, database=database_connection(database_url, settings.database))
    require_database(production=settings.production, max_replicas=settings.scaling.max_replicas, database=settings.database)
    hub, smtp = _secret(config, "hubToken"), _secret(config, "alertSmtpPassword")
    if settings.model_hub_auth and hub is None:
        raise ConfigError(f"{_key('modelHubAuth')} is true but the secret {_key('hubToken')} is empty; "
                          "set it with `pulumi config set --secret hubToken`")
    return settings, StackSecrets(
        hub_token=hub if settings.model_hub_auth else None,
        smtp_password=_smtp_password(settings, smtp),
        conversation_database_url=pulumi.Output.secret(database_url) if database_url else None,
    )


def _secret(config: pulumi.Config, name: str) -> pulumi.Output[str] | None:
    """A secret config value as a secret Output, or None when it is unset or empty (empty means "none")."""
    raw = pulumi.runtime.get_config(f"{config.name}:{name}")
    return pulumi.Output.secret(raw) if raw else None


def _smtp_password(settings: StackSettings, password: pulumi.Output[str] | None) -> pulumi.Output[str] | None:
    """Username and password come as a pair: one without the other fails only when the first alert is mailed."""
    if not settings.alerts.enabled:
        return None
    if settings.alerts.smtp_username and password is None:
        raise ConfigError(
            f"{_key('alertSmtpUsername')} is {settings.alerts.smtp_username!r} but the secret {_key('alertSmtpPassword')} is "
            "empty, so Alertmanager would fail to log in when it mails the first alert; set it with "
            f"`pulumi config set --secret alertSmtpPassword`, or clear {_key('alertSmtpUsername')} for a relay without login"
        )
    if password is not None and not settings.alerts.smtp_username:
        raise ConfigError(f"the secret {_key('alertSmtpPassword')} is set but {_key('alertSmtpUsername')} is empty; "
                          "set the user it belongs to, or set the password to ''")
    return password
