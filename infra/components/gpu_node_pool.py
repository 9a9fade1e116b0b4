"""GPU capacity for the chat pods: a Karpenter NodePool (and node class) or existing GPU nodes, plus the device plugin.

The component also hands out `placement`, the tolerations, node affinity and GPU limits
the chat pods need, computed from the same taint and labels it puts on the nodes, so the
two cannot drift apart (a `=true` taint against a `=present` toleration strands pods).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.contract import COMMON_LABELS
from infra.settings.gpu import GpuSettings

GPU_RESOURCE = "nvidia.com/gpu"
KARPENTER_API = "karpenter.sh/v1"
EC2_NODE_CLASS_API = "karpenter.k8s.aws/v1"
DEVICE_PLUGIN_NAMESPACE = "kube-system"


@dataclass(frozen=True)
class PodPlacement:
    """Scheduling a chat pod needs to land on (and only on) the GPU nodes."""

    tolerations: tuple[dict[str, str], ...] = ()
    required_node_labels: tuple[tuple[str, str], ...] = ()
    limits: dict[str, str] = field(default_factory=dict)

    def affinity(self) -> dict[str, Any] | None:
        if not self.required_node_labels:
            return None
        return {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": k, "operator": "In", "values": [v]} for k, v in self.required_node_labels
                            ]
                        }
                    ]
                }
            }
        }


def placement_for(gpu: GpuSettings) -> PodPlacement:
    """The one place tolerations are derived from the taint: same key, value and effect, operator Equal."""
    if not gpu.enabled:
        return PodPlacement()
    toleration = {"key": gpu.taint.key, "operator": "Equal", "value": gpu.taint.value, "effect": gpu.taint.effect}
    return PodPlacement(
        tolerations=(toleration,),
        required_node_labels=gpu.node_labels,
        limits={GPU_RESOURCE: str(gpu.gpus_per_pod)},
    )


@dataclass
class GpuNodePoolArgs:
    gpu: GpuSettings
    name_prefix: str = "clawbot"


class GpuNodePool(pulumi.ComponentResource):
    placement: PodPlacement
    node_pool_name: pulumi.Output[str] | None

    def __init__(self, name: str, args: GpuNodePoolArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("clawbot:infra:GpuNodePool", name, None, opts)
        gpu = args.gpu
        self.placement = placement_for(gpu)
        self.node_pool = None
        self.node_class = None
        self.device_plugin = None
        child = pulumi.ResourceOptions(parent=self)

        if gpu.mode == "karpenter":
            class_name = gpu.node_class_name or f"{args.name_prefix}-gpu"
            if not gpu.node_class_name:
                self.node_class = k8s.apiextensions.CustomResource(
                    f"{name}-nodeclass",
                    api_version=EC2_NODE_CLASS_API,
                    kind="EC2NodeClass",
                    metadata={"name": class_name, "labels": COMMON_LABELS},
                    spec=_ec2_node_class_spec(gpu),
                    opts=child,
                )
            self.node_pool = k8s.apiextensions.CustomResource(
                f"{name}-nodepool",
                api_version=KARPENTER_API,
                kind="NodePool",
                metadata={"name": f"{args.name_prefix}-gpu", "labels": COMMON_LABELS},
                spec=_node_pool_spec(gpu, class_name),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.node_class] if self.node_class else None),
            )

        if gpu.enabled and not gpu.gpu_operator:
            self.device_plugin = _device_plugin(name, gpu, self.placement, child)

        self.node_pool_name = self.node_pool.metadata["name"] if self.node_pool else None
        self.register_outputs({"mode": gpu.mode, "nodePool": self.node_pool_name})


def _requirements(gpu: GpuSettings) -> list[dict[str, Any]]:
    reqs: list[dict[str, Any]] = []
    if gpu.instance_families:
        reqs.append(
            {"key": "karpenter.k8s.aws/instance-family", "operator": "In", "values": list(gpu.instance_families)}
        )
    if gpu.instance_types:
        reqs.append({"key": "node.kubernetes.io/instance-type", "operator": "In", "values": list(gpu.instance_types)})
    reqs.append({"key": "karpenter.sh/capacity-type", "operator": "In", "values": list(gpu.capacity_types)})
    reqs.append({"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]})
    reqs.append({"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]})
    return reqs


def _node_pool_spec(gpu: GpuSettings, node_class_name: str) -> dict[str, Any]:
    return {
        "template": {
            "metadata": {"labels": dict(gpu.node_labels)},
            "spec": {
                "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": node_class_name},
                "requirements": _requirements(gpu),
                "taints": [{"key": gpu.taint.key, "value": gpu.taint.value, "effect": gpu.taint.effect}],
                "expireAfter": gpu.expire_after,
                # Bounds a drain: the PDB and do-not-disrupt are honoured until then, so drift cannot be blocked forever.
                "terminationGracePeriod": gpu.termination_grace_period,
            },
        },
        # Caps spend: Karpenter stops launching nodes once the pool holds this many GPUs.
        "limits": {GPU_RESOURCE: str(gpu.gpu_limit)},
        "disruption": {
            "consolidationPolicy": gpu.consolidation_policy,
            "consolidateAfter": gpu.consolidate_after,
            "budgets": disruption_budgets(gpu),
        },
    }


def disruption_budgets(gpu: GpuSettings) -> list[dict[str, Any]]:
    """Drift (a new pinned AMI, a changed node class) and consolidation replace `disruptionBudget` nodes at a time: a GPU
    node holds chat pods whose model takes minutes to load, and drift starts each replacement before it drains. An
    empty node holds none, so empty ones go at once (GPU hours are dear). Expiry and interruption are forced and
    bounded by terminationGracePeriod instead; budgets do not apply to them."""
    return [
        {"nodes": str(gpu.disruption_budget), "reasons": ["Drifted", "Underutilized"]},
        {"nodes": "100%", "reasons": ["Empty"]},
    ]


def _ec2_node_class_spec(gpu: GpuSettings) -> dict[str, Any]:
    return {
        "role": gpu.node_class_role,
        "amiSelectorTerms": [{"alias": gpu.ami_alias}],
        "subnetSelectorTerms": [{"tags": dict(gpu.subnet_tags)}],
        "securityGroupSelectorTerms": [{"tags": dict(gpu.security_group_tags)}],
        "blockDeviceMappings": [
            {
                "deviceName": "/dev/xvda",
                "ebs": {
                    "volumeSize": gpu.node_volume_size,
                    "volumeType": "gp3",
                    "encrypted": True,
                    "deleteOnTermination": True,
                },
            }
        ],
        # IMDSv2 only, one hop: pods cannot borrow the node's IAM role through the metadata service.
        "metadataOptions": {"httpEndpoint": "enabled", "httpTokens": "required", "httpPutResponseHopLimit": 1},
    }


def _device_plugin(
    name: str, gpu: GpuSettings, placement: PodPlacement, child: pulumi.ResourceOptions
) -> k8s.apps.v1.DaemonSet:
    labels = {"app.kubernetes.io/name": "nvidia-device-plugin", **COMMON_LABELS}
    return k8s.apps.v1.DaemonSet(
        f"{name}-device-plugin",
        metadata={"name": "nvidia-device-plugin", "namespace": DEVICE_PLUGIN_NAMESPACE, "labels": labels},
        spec={
            "selector": {"matchLabels": {"app.kubernetes.io/name": "nvidia-device-plugin"}},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "priorityClassName": "system-node-critical",
                    # Same toleration as the chat pods: the plugin must run where they run.
                    "tolerations": [dict(t) for t in placement.tolerations],
                    "affinity": placement.affinity(),
                    "automountServiceAccountToken": False,
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {
                            "name": "nvidia-device-plugin",
                            "image": gpu.device_plugin_image,
                            "env": [{"name": "FAIL_ON_INIT_ERROR", "value": "false"}],
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "resources": {
                                "requests": {"cpu": "10m", "memory": "32Mi"},
                                "limits": {"cpu": "100m", "memory": "128Mi"},
                            },
                            "volumeMounts": [{"name": "device-plugin", "mountPath": "/var/lib/kubelet/device-plugins"}],
                        }
                    ],
                    # The plugin registers with the kubelet through this socket directory; there is no other way in.
                    "volumes": [
                        {
                            "name": "device-plugin",
                            "hostPath": {"path": "/var/lib/kubelet/device-plugins", "type": "Directory"},
                        }
                    ],
                },
            },
        },
        opts=child,
    )
