"""Every `clawbot:*` stack config key: its schema type, default, description and (for the keys the stack hands to
the service) bounds, declared once.

`Pulumi.yaml`'s config schema is held to CONFIG_KEYS by a test, and docs/reference/stack-config.md is generated from
it. A key that sets a service setting (`service_key`) takes that setting's default, bounds and choices from the
service's own declaration in app/settings.py rather than repeating them. The topic modules beside this one parse and
check the values; components never read config themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.settings import DEFAULT_MAX_TOKENS, bounds_of, choices_of, default_of

PROJECT = "clawbot"


@dataclass(frozen=True)
class ConfigKey:
    name: str
    type: str  # the Pulumi.yaml schema type: string, integer, boolean or array (of strings)
    default: Any
    description: str
    setting: str = ""  # the service's environment variable this key sets, if any
    bounds: tuple[int, int] | None = None  # an integer key's lowest and highest value
    choices: tuple[str, ...] = ()  # a string key's allowed values, where the set is closed


def service_key(
    name: str,
    setting: str,
    description: str,
    *,
    type: str = "",
    default: Any = None,
    within: tuple[int, int] | None = None,
) -> ConfigKey:
    """A key the stack renders into the service's `setting`: its default, bounds or choices are the setting's own.

    `within` narrows the bounds where the stack needs less than the service accepts (a test holds it inside them);
    `default` replaces the service's where the stack's differs. The bounds are appended to the description."""
    bounds: tuple[int, int] | None = None
    try:
        lo, hi = bounds_of(setting)
        bounds = within or (int(lo), int(hi))
        assert bounds[0] >= lo and bounds[1] <= hi, f"{name}: {within} is not within {setting}'s {lo}..{hi}"
    except KeyError:
        pass
    try:
        choices = choices_of(setting)
    except KeyError:
        choices = ()
    default = default_of(setting) if default is None else default
    assert default is not None, f"{name}: {setting} has no default of its own (the service derives it); pass one"
    description = f"{description} ({bounds[0]}..{bounds[1]})" if bounds else description
    kind = type or ("integer" if bounds else "string")
    return ConfigKey(name, kind, default, description, setting=setting, bounds=bounds, choices=choices)


CONFIG_KEYS: tuple[ConfigKey, ...] = (
    service_key(
        "environment",
        "APP_ENV",
        "production or development: production refuses open ingress and requires mounted key files",
        default="development",
    ),
    ConfigKey("namespace", "string", "clawbot", "Kubernetes namespace for the chat service, its secrets and policies"),
    ConfigKey(
        "image", "string", "ghcr.io/clawbot/clawbot:0.1.0", "Container image of the chat service (pin a tag or digest)"
    ),
    ConfigKey("imagePullPolicy", "string", "IfNotPresent", "IfNotPresent, Always or Never"),
    service_key(
        "modelPath",
        "MODEL_PATH",
        "MODEL_PATH: a directory under /app/models or /app/data, a hub id org/name, or the embedded model",
    ),
    service_key(
        "quantization",
        "QUANTIZATION",
        "QUANTIZATION: auto (a GGUF keeps its own 4-bit blocks, a Hugging Face model gets nf4 on GPU), gguf, nf4, int8 or none",
    ),
    service_key(
        "dtype", "DTYPE", "DTYPE: compute dtype, auto (bf16 where the GPU or CPU has it), float32, bfloat16 or float16"
    ),
    service_key(
        "prefixCacheTokens",
        "PREFIX_CACHE_TOKENS",
        "PREFIX_CACHE_TOKENS: prompt-head tokens whose KV is kept per key for reuse, 0 turns it off",
    ),
    service_key(
        "maxTokens", "MAX_TOKENS", "MAX_TOKENS: the most tokens one reply may generate", default=DEFAULT_MAX_TOKENS
    ),
    service_key("maxBatchSize", "MAX_BATCH_SIZE", "MAX_BATCH_SIZE: rows the batching engine decodes together"),
    service_key("jwtTtlSeconds", "JWT_TTL_SECONDS", "JWT_TTL_SECONDS: lifetime of tokens issued by /api/auth"),
    service_key(
        "rateLimitPerKey", "RATE_LIMIT_PER_KEY", "RATE_LIMIT_PER_KEY: requests per minute one API key may make"
    ),
    ConfigKey(
        "modelHubAuth",
        "boolean",
        False,
        "Read a model-hub token from the secret config key hubToken (config set --secret) and seal it in the key file",
    ),
    ConfigKey(
        "minReplicas", "integer", 1, "Fewest chat pods (HPA minimum; the replica count when minReplicas == maxReplicas)"
    ),
    ConfigKey("maxReplicas", "integer", 1, "Most chat pods (HPA maximum); equal to minReplicas disables the HPA"),
    ConfigKey("cpuRequest", "string", "1", "CPU request of the chat container"),
    ConfigKey("cpuLimit", "string", "2", "CPU limit of the chat container"),
    ConfigKey("memoryRequest", "string", "2Gi", "Memory request of the chat container"),
    ConfigKey("memoryLimit", "string", "4Gi", "Memory limit of the chat container"),
    ConfigKey(
        "dataVolumeSize", "string", "100Gi", "Size of the PVC mounted at /app/data (model cache and conversations)"
    ),
    ConfigKey(
        "dataAccessMode",
        "string",
        "ReadWriteOnce",
        "Access mode of the data PVC: ReadWriteOnce (one node) or ReadWriteMany (needed when replicas may land on several nodes)",
    ),
    ConfigKey(
        "storageClass",
        "string",
        "",
        "StorageClass of the data PVC, required (EKS clusters made at 1.30+ have no default class): an EBS class such as gp3 for ReadWriteOnce, an EFS class such as efs-sc for ReadWriteMany",
    ),
    ConfigKey(
        "kubernetesVersion",
        "string",
        "1.30",
        "Kubernetes minor version of the cluster, e.g. 1.33 (kubectl version); 1.30 is the oldest supported",
    ),
    # -- which cluster, what an update may replace, how a canary's share is routed (issue 21: items 1, 10, 11) ----
    ConfigKey(
        "clusterId",
        "string",
        "",
        "UID of the target cluster's kube-system namespace (kubectl get namespace kube-system -o jsonpath='{.metadata.uid}'); preview refuses any other cluster. Empty: the first update records the cluster it ran against",
    ),
    ConfigKey(
        "allowReplace",
        "boolean",
        False,
        "Set true on purpose for an update that replaces the namespace, the stable Deployment or a data claim (docs: upgrades); preview refuses such an update otherwise",
    ),
    ConfigKey(
        "gateway",
        "string",
        "",
        "Gateway API: NAMESPACE/NAME of an existing Gateway; an HTTPRoute attaches to it and splits requests between the stable set and a canary by weight (needs serviceType ClusterIP and endpointHostname)",
    ),
    ConfigKey(
        "gatewayListener",
        "string",
        "",
        "Gateway API: the Gateway listener (sectionName) the HTTPRoute attaches to; required in production, where it must be the Gateway's HTTPS listener",
    ),
    ConfigKey(
        "gatewayProxyNamespace",
        "string",
        "",
        "Gateway API: namespace of the Gateway's in-cluster data-plane pods, admitted to 18789 (empty: the Gateway's own namespace; Envoy Gateway: envoy-gateway-system)",
    ),
    ConfigKey(
        "gatewaySourceCidrs",
        "array",
        [],
        "Gateway API: CIDRs the Gateway's data plane connects from when it runs outside the cluster (an ALB's subnets), admitted to 18789",
    ),
    # -- end of the issue 21 items 1, 10, 11 block --------------------------------------------------------------------
    ConfigKey(
        "startupTimeoutSeconds",
        "integer",
        600,
        "How long the startup probe waits for the model to load before the pod is restarted (60..7200); pulumi up waits this long plus node and image time",
    ),
    # The stack's pods have a termination grace derived from it (preStop + this + a margin), kept under 11 minutes.
    service_key(
        "shutdownGraceSeconds",
        "SHUTDOWN_GRACE_SECONDS",
        "SHUTDOWN_GRACE_SECONDS: how long SIGTERM lets accepted requests finish",
        default=25,
        within=(5, 600),
    ),
    ConfigKey(
        "preStopSleepSeconds",
        "integer",
        5,
        "Seconds a stopping pod keeps serving before SIGTERM, while the Service and load balancer drop it (0..120)",
    ),
    ConfigKey(
        "serviceType",
        "string",
        "ClusterIP",
        "LoadBalancer (reachable from allowedCidrs) or ClusterIP (in-cluster only)",
    ),
    ConfigKey(
        "allowedCidrs",
        "array",
        [],
        "CIDRs allowed to reach TCP 18789 (NetworkPolicy, loadBalancerSourceRanges, ALLOWED_CIDRS)",
    ),
    ConfigKey(
        "allowPublicIngress",
        "boolean",
        False,
        "Set true on purpose to allow 0.0.0.0/0 or ::/0 in allowedCidrs of a production stack",
    ),
    ConfigKey(
        "loadBalancerClass",
        "string",
        "service.k8s.aws/nlb",
        "LoadBalancer: spec.loadBalancerClass; service.k8s.aws/nlb is the AWS Load Balancer Controller's NLB",
    ),
    ConfigKey(
        "loadBalancerScheme",
        "string",
        "internal",
        "LoadBalancer: internal (VPC only) or internet-facing (set on purpose)",
    ),
    ConfigKey(
        "loadBalancerTargetType", "string", "ip", "LoadBalancer: ip (pods are targets) or instance (nodes are targets)"
    ),
    ConfigKey(
        "preserveClientIp",
        "boolean",
        True,
        "LoadBalancer: pass the client address to the pods, so the NetworkPolicy and ALLOWED_CIDRS see it",
    ),
    ConfigKey(
        "loadBalancerSubnetCidrs",
        "array",
        [],
        "LoadBalancer with ip targets: CIDRs of the NLB's own subnets (e.g. 10.0.0.0/24); its health checks come from there and only they are admitted to 18789 besides allowedCidrs",
    ),
    ConfigKey(
        "allowVpcWideHealthChecks",
        "boolean",
        False,
        "Set true on purpose to let loadBalancerSubnetCidrs hold a whole VPC's range (/16 or wider): with the VPC CNI that admits every pod of the cluster to 18789",
    ),
    ConfigKey(
        "tlsCertificateArn", "string", "", "TLS at the load balancer: ACM certificate ARN for a TLS listener on 18789"
    ),
    ConfigKey(
        "endpointHostname",
        "string",
        "",
        "DNS name clients use (the certificate's name); endpointUrl uses it; point it at the loadBalancerHostname output",
    ),
    ConfigKey(
        "podTlsSecret",
        "string",
        "",
        "TLS in the pod: an existing kubernetes.io/tls Secret in the namespace to serve 18789 with",
    ),
    ConfigKey(
        "podTlsIssuer",
        "string",
        "",
        "TLS in the pod: a cert-manager issuer that exists, ClusterIssuer/NAME or Issuer/NAME (preview reads it and requires it Ready), or private-ca to have the program create a private CA in the namespace; a Certificate is created",
    ),
    ConfigKey(
        "podTlsIssuerPrivate",
        "boolean",
        False,
        "The issuer named by podTlsIssuer is a private CA (cert-manager CA, Vault, AWS Private CA): the certificate then also names the Service's .svc names, which a public ACME issuer refuses",
    ),
    ConfigKey("allowPlaintext", "boolean", False, "Set true on purpose to run a production stack without TLS"),
    ConfigKey(
        "trustedProxies", "array", [], "TRUSTED_PROXIES: CIDRs of proxies whose X-Forwarded-For the service believes"
    ),
    ConfigKey(
        "monitoringNamespace",
        "string",
        "monitoring",
        "Namespace of Prometheus; it alone may scrape /metrics besides allowedCidrs",
    ),
    ConfigKey(
        "modelHubEgressCidrs",
        "array",
        [],
        "CIDRs the model download Job may reach on TCP 443 (private ranges excluded), or the proxy's addresses with modelHubProxy; the chat pods never leave the cluster",
    ),
    ConfigKey(
        "modelHubProxy",
        "string",
        "",
        "HTTPS proxy the model download Job goes through (http://HOST:PORT); modelHubEgressCidrs then name where it listens",
    ),
    ConfigKey(
        "modelHubHosts",
        "array",
        ["huggingface.co", "*.huggingface.co", "*.hf.co"],
        "Host names the model download reaches; with ciliumPolicies a toFQDNs rule admits these and nothing else",
    ),
    ConfigKey(
        "ciliumPolicies",
        "boolean",
        False,
        "The cluster runs Cilium: the model download Job reaches modelHubHosts by name (a CiliumNetworkPolicy toFQDNs rule) instead of modelHubEgressCidrs",
    ),
    ConfigKey(
        "modelDownloadTimeoutSeconds",
        "integer",
        3600,
        "How long the Job that fetches a hub model into the data volume may run (60..86400); pulumi up waits for it before the chat pods roll",
    ),
    ConfigKey(
        "databaseEgressCidrs",
        "array",
        [],
        "CIDRs the conversation database listens on (e.g. the RDS subnets); required with conversationDatabaseUrl",
    ),
    ConfigKey(
        "kubernetesApiCidrs",
        "array",
        [],
        "CIDRs of the Kubernetes API server endpoints the snapshot job (and, with "
        "keyEncryption namespace, the chat pods' init step) may reach on 443/6443; empty allows the snapshot job any "
        "address and the chat pods private ranges only",
    ),
    ConfigKey(
        "redisEnabled",
        "boolean",
        False,
        "Run Redis for the response cache and rate limits shared across replicas (sets REDIS_URL)",
    ),
    ConfigKey("redisImage", "string", "redis:7.4.2-alpine", "Redis image when redisEnabled"),
    ConfigKey(
        "gpuMode",
        "string",
        "none",
        "karpenter (a NodePool for GPU nodes), existing (GPU nodes already in the cluster) or none (CPU)",
    ),
    ConfigKey("gpusPerPod", "integer", 1, "nvidia.com/gpu limit of each chat pod when gpuMode is not none"),
    ConfigKey("gpuInstanceFamilies", "array", ["g5", "g6"], "Karpenter: EC2 instance families for GPU nodes"),
    ConfigKey(
        "gpuInstanceTypes", "array", [], "Karpenter: exact instance types (empty allows any size of the families)"
    ),
    ConfigKey("gpuCapacityTypes", "array", ["on-demand"], "Karpenter: on-demand, spot and/or reserved"),
    ConfigKey("gpuLimit", "integer", 10, "Karpenter: most GPUs the NodePool may provision in total"),
    ConfigKey(
        "gpuTaintKey", "string", "nvidia.com/gpu", "Taint key on GPU nodes (the chat pods get the matching toleration)"
    ),
    ConfigKey("gpuTaintValue", "string", "true", "Taint value on GPU nodes"),
    ConfigKey(
        "gpuTaintEffect", "string", "NoSchedule", "Taint effect on GPU nodes: NoSchedule, PreferNoSchedule or NoExecute"
    ),
    ConfigKey(
        "gpuNodeLabels",
        "array",
        ["clawbot.dev/accelerator=nvidia"],
        "key=value labels of GPU nodes; chat pods require them via node affinity",
    ),
    ConfigKey(
        "gpuOperator",
        "boolean",
        False,
        "true when the NVIDIA GPU operator already runs the device plugin (no DaemonSet is created)",
    ),
    ConfigKey(
        "devicePluginImage",
        "string",
        "nvcr.io/nvidia/k8s-device-plugin:v0.17.2",
        "Image of the NVIDIA device plugin DaemonSet",
    ),
    ConfigKey(
        "nodeClassName",
        "string",
        "",
        "Karpenter: name of an existing EC2NodeClass to use; empty creates one from nodeClassRole",
    ),
    ConfigKey("nodeClassRole", "string", "", "Karpenter: IAM role of the nodes of the created EC2NodeClass"),
    ConfigKey(
        "nodeClassSubnetTags",
        "array",
        [],
        "Karpenter: key=value tags selecting the subnets of the created EC2NodeClass",
    ),
    ConfigKey(
        "nodeClassSecurityGroupTags",
        "array",
        [],
        "Karpenter: key=value tags selecting the security groups of the created EC2NodeClass",
    ),
    ConfigKey(
        "nodeClassAmiAlias",
        "string",
        "al2023@v20260724",
        "Karpenter: pinned AMI alias family@version of the created EC2NodeClass (the GPU variant is picked for GPU instances); bump it to roll the nodes, @latest is refused",
    ),
    ConfigKey(
        "nodeVolumeSize",
        "string",
        "200Gi",
        "Karpenter: root volume of GPU nodes (container images with CUDA are large)",
    ),
    ConfigKey("consolidationPolicy", "string", "WhenEmpty", "Karpenter: WhenEmpty or WhenEmptyOrUnderutilized"),
    ConfigKey(
        "consolidateAfter",
        "string",
        "10m",
        "Karpenter: how long a node stays empty/underused before it is consolidated",
    ),
    ConfigKey("nodeExpireAfter", "string", "720h", "Karpenter: node lifetime before replacement"),
    ConfigKey(
        "disruptionBudget",
        "string",
        "1",
        "Karpenter: GPU nodes drift or consolidation may replace at once (a count of 1 or more); empty nodes go without limit",
    ),
    ConfigKey(
        "nodeTerminationGracePeriod",
        "string",
        "1h",
        "Karpenter: how long a node drain may wait on the PDB and do-not-disrupt before its pods are deleted; at least disruptionBudget x (startupTimeoutSeconds + the pod's termination grace)",
    ),
    ConfigKey("hpaCpuPercent", "integer", 70, "HPA: target average CPU utilization (10..100)"),
    ConfigKey(
        "hpaInflightPerPod",
        "integer",
        0,
        "HPA: target clawbot_inflight_requests per pod (needs customMetricsAdapter); 0 disables",
    ),
    ConfigKey(
        "customMetricsAdapter",
        "boolean",
        False,
        "true when prometheus-adapter serves clawbot_inflight_requests on custom.metrics.k8s.io",
    ),
    ConfigKey(
        "scaleDownStabilizationSeconds", "integer", 300, "HPA: how long load must stay low before pods are removed"
    ),
    ConfigKey(
        "alertsEnabled",
        "boolean",
        False,
        "Create the ServiceMonitor, PrometheusRule and AlertmanagerConfig (needs the Prometheus operator)",
    ),
    ConfigKey("alertEmail", "string", "", "Address alerts are mailed to (required when alertsEnabled)"),
    ConfigKey("alertEmailFrom", "string", "clawbot-alerts@localhost", "Sender address of alert mail"),
    ConfigKey("alertSmarthost", "string", "smtp.localhost:587", "SMTP relay host:port for alert mail"),
    ConfigKey("alertSmtpUsername", "string", "", "SMTP user; needs the secret config key alertSmtpPassword"),
    ConfigKey(
        "alertSmtpRequireTls",
        "boolean",
        True,
        "Require STARTTLS to alertSmarthost; false only for a relay on a trusted network",
    ),
    ConfigKey(
        "alertSelectorLabels",
        "array",
        ["release=kube-prometheus-stack"],
        "key=value labels on the ServiceMonitor, PrometheusRule and AlertmanagerConfig; kube-prometheus-stack loads only objects labelled release=<its Helm release name>",
    ),
    ConfigKey(
        "alertGroupWait",
        "string",
        "30s",
        "How long Alertmanager gathers the alerts of a new group before it sends the first mail",
    ),
    ConfigKey(
        "alertCpuPercent", "integer", 85, "Alert when a pod uses more than this % of its CPU limit for alertCpuFor"
    ),
    ConfigKey("alertCpuFor", "string", "5m", "How long CPU must stay above alertCpuPercent before the alert fires"),
    ConfigKey(
        "alertMemoryPercent",
        "integer",
        90,
        "Alert when a pod uses more than this % of its memory limit for alertMemoryFor",
    ),
    ConfigKey(
        "alertMemoryFor", "string", "1m", "How long memory must stay above alertMemoryPercent before the alert fires"
    ),
    ConfigKey(
        "alertFirstTokenMs",
        "integer",
        2000,
        "Alert when p95 time to first token exceeds this many milliseconds for alertLatencyFor",
    ),
    ConfigKey(
        "alertTokenLatencyMs",
        "integer",
        250,
        "Alert when p95 time per output token after the first exceeds this many milliseconds for alertLatencyFor",
    ),
    ConfigKey(
        "alertLatencyFor", "string", "5m", "How long a latency p95 must stay above its threshold before the alert fires"
    ),
    ConfigKey(
        "alertErrorRatePercent",
        "integer",
        5,
        "Alert when more than this % of requests (probes left out) fail with 5xx over alertErrorRateWindow",
    ),
    ConfigKey("alertErrorRateWindow", "string", "10m", "The window the 5xx share is measured over"),
    service_key(
        "alertKeyRequestsPerMinute",
        "ABNORMAL_KEY_PER_MINUTE",
        "Alert when one API key makes more requests a minute than this; also the app's ABNORMAL_KEY_PER_MINUTE",
    ),
    ConfigKey("alertKeyWindow", "string", "1m", "The window one key's request rate is averaged over"),
    ConfigKey("alertQueueDepth", "integer", 64, "Alert when requests waiting for a batch slot stay above this for 5m"),
    ConfigKey(
        "alertClockOffsetMs",
        "integer",
        500,
        "Alert when a node running chat pods is more than this many ms off NTP time for 10m (JWTs tolerate 5 s of skew)",
    ),
    ConfigKey(
        "keyRotationDays",
        "integer",
        90,
        "Days between rotations of the KEK, API keys and JWT keys (the epoch in the random keepers)",
    ),
    ConfigKey(
        "backupSchedule",
        "string",
        "17 3 * * *",
        "Cron schedule (UTC) of the data-volume snapshot and the database dump",
    ),
    ConfigKey(
        "backupSnapshotClass",
        "string",
        "",
        "VolumeSnapshotClass for daily snapshots of the data volume (its CSI driver must support snapshots; EFS does not); empty takes none",
    ),
    ConfigKey(
        "dataRestoreSnapshot",
        "string",
        "",
        "Restore: a VolumeSnapshot of the data volume; the chat pods then mount a new claim made from it (<snapshot>-restored)",
    ),
    ConfigKey(
        "backupRetention",
        "integer",
        7,
        "How many snapshots and database dumps are kept (1..90); older ones are deleted",
    ),
    ConfigKey(
        "backupImage",
        "string",
        "python:3.13-alpine@sha256:399babc8b49529dabfd9c922f2b5eea81d611e4512e3ed250d75bd2e7683f4b0",
        "Image of the snapshot job (runs a standard-library Python script against the Kubernetes API); pinned by digest",
    ),
    ConfigKey(
        "databaseBackupImage",
        "string",
        "postgres:17-alpine@sha256:742f40ea20b9ff2ff31db5458d127452988a2164df9e17441e191f3b72252193",
        "Image of the database dump job (pg_dump; its major version must be at least the server's); pinned by digest",
    ),
    ConfigKey(
        "databaseBackupVolumeSize",
        "string",
        "20Gi",
        "Size of the PVC that holds the database dumps when no backupBucket is set",
    ),
    # -- backups that leave the cluster (docs/operations/backups.md) --
    ConfigKey(
        "backupBucket",
        "string",
        "",
        "s3://BUCKET/PREFIX the database dumps and the data volume's files are copied to daily; the bucket (versioned, with the lifecycle in the backups output) is made outside the program; production requires it",
    ),
    ConfigKey("backupBucketRegion", "string", "", "Region of backupBucket, e.g. us-east-1; required with it"),
    ConfigKey(
        "backupBucketRetentionDays",
        "integer",
        30,
        "Days backupBucket keeps each dump and each replaced or deleted data file (its lifecycle rules; the jobs check them before they upload) (1..3650)",
    ),
    ConfigKey(
        "backupRoleArn",
        "string",
        "",
        "IAM role the backup jobs assume through IRSA (annotated on their ServiceAccount); empty with an EKS Pod Identity association",
    ),
    ConfigKey(
        "backupEgressCidrs",
        "array",
        [],
        "CIDRs the upload jobs may reach on 443 (the S3 gateway endpoint's prefix-list ranges and the STS endpoint); empty allows any address",
    ),
    ConfigKey(
        "backupUploadImage",
        "string",
        "amazon/aws-cli:2.37.5@sha256:fb7ccfc7b4e3a05017e6c9ded4ba959b99af622130e211fb976c68c2f4d3f224",
        "Image of the jobs that copy backups to backupBucket (the aws CLI); pinned by digest",
    ),
    ConfigKey(
        "backupSnapshotDeadlineMinutes",
        "integer",
        60,
        "How long a VolumeSnapshot may take to become ready to use (10..1440); the job fails after it, and snapshots not ready after it are deleted",
    ),
    # -- the key store (docs/operations/keys.md) --
    ConfigKey(
        "keyEncryption",
        "string",
        "namespace",
        "Where the key-encryption key lives: kms (AWS KMS; the pods ask it to unwrap the data key; production requires it) or namespace (a Secret in <namespace>-kek that only the pods' init step reads)",
    ),
    ConfigKey(
        "kmsDataKey",
        "string",
        "",
        "keyEncryption kms: the JSON `python -m app.keys kms-data-key --kms-key-id <KMS key ARN>` prints (the key's ARN, the wrapped data key, its public key; nothing secret)",
    ),
    ConfigKey(
        "kmsRoleArn",
        "string",
        "",
        "keyEncryption kms: IAM role the chat pods assume through IRSA (annotated on their ServiceAccount); empty with an EKS Pod Identity association",
    ),
    ConfigKey(
        "kmsEgressCidrs",
        "array",
        [],
        "keyEncryption kms: CIDRs of the KMS VPC endpoint (and, with IRSA, the STS endpoint) the chat pods may reach on 443; production requires them",
    ),
    ConfigKey(
        "clusterSecretsKeyArn",
        "string",
        "",
        "ARN of the KMS key EKS envelope-encrypts Kubernetes Secrets with (aws eks describe-cluster --query cluster.encryptionConfig); production requires it",
    ),
)
DEFAULTS: dict[str, Any] = {k.name: k.default for k in CONFIG_KEYS}
KEYS: dict[str, ConfigKey] = {k.name: k for k in CONFIG_KEYS}
# Declared in Pulumi.yaml with `secret: true` and no default (a secret cannot have a plain one), so the CLI refuses
# a stack that lacks them or holds them in plain text; an empty value means "none".
SECRET_KEYS: dict[str, str] = {
    "hubToken": "Model-hub read token (used when modelHubAuth is true); empty for none",
    "alertSmtpPassword": "SMTP password of alertSmtpUsername; empty when the relay needs no login",
    "conversationDatabaseUrl": "PostgreSQL URL of the conversation store (postgresql://USER:PASSWORD@HOST:5432/DB); empty keeps SQLite (one replica)",
}

# An object key, which Pulumi.yaml's config schema cannot type (it knows string, integer, boolean and array): it is
# described in Pulumi.yaml's header instead and checked by infra/settings/release.py.
CANARY_KEY = "canary"
STRUCTURED_KEYS: dict[str, str] = {
    CANARY_KEY: "Canary release: {image: <ref>, weight: 1..50 (percent, default 10)}; absent for none",
}
