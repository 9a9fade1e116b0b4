"""GPU settings: where the chat pods' GPUs come from (a Karpenter NodePool, existing nodes, or none) and how the
nodes are tainted and labelled, so the pods' tolerations and affinity can be derived from the same values."""

from __future__ import annotations

import re
from dataclasses import dataclass

from infra.settings.values import (
    LABEL_KEY,
    LABEL_VALUE,
    ConfigError,
    Raw,
    boolean,
    choice,
    config_key,
    duration,
    integer,
    label_pairs,
    memory_bytes,
    strings,
    text,
)

GPU_MODES = ("karpenter", "existing", "none")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
CAPACITY_TYPES = ("on-demand", "spot", "reserved")
CONSOLIDATION_POLICIES = ("WhenEmpty", "WhenEmptyOrUnderutilized")
# family@version with the version pinned: an AL2/AL2023 release is vYYYYMMDD, a Bottlerocket one v1.2.3 (the EKS AMI
# release names; Karpenter's EC2NodeClass alias). Windows families take only @latest, and GPU pools are Linux.
_AMI_ALIAS = {
    "al2023": re.compile(r"^v\d{8}$"),
    "al2": re.compile(r"^v\d{8}$"),
    "bottlerocket": re.compile(r"^v\d+\.\d+\.\d+$"),
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
    disruption_budget: int  # GPU nodes drift or consolidation may replace at once
    termination_grace_period: str  # how long Karpenter lets a node drain before it deletes the pods left

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


def parse_gpu(raw: Raw) -> GpuSettings:
    mode = choice(raw, "gpuMode", GPU_MODES)
    node_class_name, node_class_role = text(raw, "nodeClassName"), text(raw, "nodeClassRole")
    subnet_tags, sg_tags = label_pairs(raw, "nodeClassSubnetTags"), label_pairs(raw, "nodeClassSecurityGroupTags")
    if mode == "karpenter" and not node_class_name:
        missing = [
            k
            for k, v in (
                ("nodeClassRole", node_class_role),
                ("nodeClassSubnetTags", subnet_tags),
                ("nodeClassSecurityGroupTags", sg_tags),
            )
            if not v
        ]
        if missing:
            raise ConfigError(
                f"{', '.join(config_key(k) for k in missing)} must be set when {config_key('gpuMode')} is karpenter and no "
                f"{config_key('nodeClassName')} names an existing EC2NodeClass"
            )
    capacity = _capacity_types(raw)
    families, types = strings(raw, "gpuInstanceFamilies"), strings(raw, "gpuInstanceTypes")
    if mode == "karpenter" and not (families or types):
        raise ConfigError(
            f"{config_key('gpuInstanceFamilies')} or {config_key('gpuInstanceTypes')} must name GPU instances "
            f"when {config_key('gpuMode')} is karpenter"
        )
    taint = _taint(raw)
    node_labels = label_pairs(raw, "gpuNodeLabels")
    if mode == "existing" and not node_labels:
        raise ConfigError(
            f"{config_key('gpuNodeLabels')} must name at least one label of the existing GPU nodes when "
            f"{config_key('gpuMode')} is existing"
        )
    budget = text(raw, "disruptionBudget", required=True).strip()
    if not budget.isdigit() or int(budget) < 1:
        # A percentage rounds up to more nodes as the pool grows, and each of them waits on the PDB for the pods of the
        # one before: the check on nodeTerminationGracePeriod needs the count. 0 would block drift forever.
        raise ConfigError(
            f"{config_key('disruptionBudget')} must be a node count of 1 or more (how many GPU nodes drift or "
            f"consolidation may replace at once), got {budget!r}"
        )
    node_class_name = node_class_name.strip()
    ami_alias = text(raw, "nodeClassAmiAlias", required=True).strip()
    if mode == "karpenter" and not node_class_name:
        _pinned_ami(ami_alias)
    gpu = GpuSettings(
        mode=mode,
        gpus_per_pod=integer(raw, "gpusPerPod", 1, 8),
        instance_families=families,
        instance_types=types,
        capacity_types=capacity or ("on-demand",),
        gpu_limit=integer(raw, "gpuLimit", 1, 1000),
        taint=taint,
        node_labels=node_labels,
        gpu_operator=boolean(raw, "gpuOperator"),
        device_plugin_image=text(raw, "devicePluginImage", required=True),
        node_class_name=node_class_name,
        node_class_role=node_class_role,
        subnet_tags=subnet_tags,
        security_group_tags=sg_tags,
        ami_alias=ami_alias,
        node_volume_size=text(raw, "nodeVolumeSize", required=True),
        consolidation_policy=choice(raw, "consolidationPolicy", CONSOLIDATION_POLICIES),
        consolidate_after=duration(raw, "consolidateAfter"),
        expire_after=duration(raw, "nodeExpireAfter"),
        disruption_budget=int(budget),
        termination_grace_period=duration(raw, "nodeTerminationGracePeriod"),
    )
    if gpu.termination_grace_period == "Never":
        raise ConfigError(
            f"{config_key('nodeTerminationGracePeriod')} must be a duration like 1h: it bounds how long a drain may wait"
        )
    memory_bytes("nodeVolumeSize", gpu.node_volume_size)
    return gpu


def _pinned_ami(alias: str) -> None:
    """An EC2NodeClass alias with its version pinned: with @latest every AMI AWS publishes drifts every node at once,
    at a time nobody chose; a pinned one changes when the stack bumps it."""
    family, _, version = alias.partition("@")
    pattern = _AMI_ALIAS.get(family)
    if pattern is None or not pattern.match(version):
        raise ConfigError(
            f"{config_key('nodeClassAmiAlias')} must pin an AMI release as family@version, e.g. al2023@v20260724 or "
            f"bottlerocket@v1.40.0 (families: {', '.join(_AMI_ALIAS)}), got {alias!r}; @latest would replace every GPU "
            "node whenever AWS publishes an AMI. The releases are listed at github.com/awslabs/amazon-eks-ami/releases"
        )


def _capacity_types(raw: Raw) -> tuple[str, ...]:
    capacity = strings(raw, "gpuCapacityTypes")
    for c in capacity:
        if c not in CAPACITY_TYPES:
            raise ConfigError(
                f"{config_key('gpuCapacityTypes')} entries must be one of {', '.join(CAPACITY_TYPES)}, got {c!r}"
            )
    return capacity


def _taint(raw: Raw) -> Taint:
    key, value = text(raw, "gpuTaintKey", required=True), text(raw, "gpuTaintValue")
    if not LABEL_KEY.match(key) or not LABEL_VALUE.match(value):
        raise ConfigError(
            f"{config_key('gpuTaintKey')}/{config_key('gpuTaintValue')} must use Kubernetes label syntax, "
            f"got {key!r}={value!r}"
        )
    return Taint(key, value, choice(raw, "gpuTaintEffect", TAINT_EFFECTS))
