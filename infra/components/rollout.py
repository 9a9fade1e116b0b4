"""How long the chat pods take to start and to roll, from the stack's start-up budget: the startup probe's bound,
the Deployments' progress deadline, and how long `pulumi up` waits for them.

A rollout adds one pod (maxSurge 1), waits until it is Ready (model loaded, NLB target healthy through the readiness
gate), then removes an old one (maxUnavailable 0), and so on through every replica. So `pulumi up` waits for the
first pod's start plus one turnover per further replica; the Deployment's progress deadline bounds one pod's start,
so a stalled pod fails the rollout long before `up`'s wait would.
"""

from __future__ import annotations

import pulumi

from infra.settings.pod import ROLLOUT_SURGE
from infra.settings.stack import StackSettings

# What a pod's start needs beyond the startup probe's budget, when it lands on a new node: Karpenter launching a GPU
# node, the CUDA image pull, and the NLB registering the pod and seeing it healthy.
PROVISIONING_BUDGET_S = 1200
# Each further pod of a rolling update lands where the pod it replaces ran: the new image pulled there (a ~5 GB CUDA
# image) and the NLB registering the pod; the replaced pod's drain (its termination grace) frees the GPU first.
POD_TURNOVER_S = 420


def pod_start_seconds(s: StackSettings) -> int:
    """One chat pod from creation to Ready: provisioning, then the start-up budget (download and load)."""
    return s.pod.startup_timeout_seconds + PROVISIONING_BUDGET_S


def progress_deadline_seconds(s: StackSettings) -> int:
    """The Deployments' progressDeadlineSeconds: a rollout makes progress each time a pod becomes Ready, so the
    longest wait between two steps is one pod's start. Kubernetes' 600 s default is below a GPU pod's first start."""
    return pod_start_seconds(s)


def turnover_seconds(s: StackSettings) -> int:
    """One further step of a rolling update: the replaced pod drains, the new one is pulled, registered and started."""
    return s.pod.termination_grace_seconds + POD_TURNOVER_S + s.pod.startup_timeout_seconds


def rollout_seconds(s: StackSettings, pods: int) -> int:
    """A rolling update through `pods` replicas, ROLLOUT_SURGE at a time."""
    steps = -(-pods // ROLLOUT_SURGE)  # ceil
    return pod_start_seconds(s) + (steps - 1) * turnover_seconds(s)


def stable_pods_rolled(s: StackSettings) -> int:
    """The most stable pods an update walks through: the HPA may have scaled to maxReplicas."""
    return s.scaling.max_replicas


def deployment_timeouts(s: StackSettings, pods: int) -> pulumi.CustomTimeouts:
    """A create starts every pod at once (a new Deployment, or one the HPA then scales); an update walks them."""
    return pulumi.CustomTimeouts(create=f"{pod_start_seconds(s)}s", update=f"{rollout_seconds(s, pods)}s")


def service_timeouts(s: StackSettings) -> pulumi.CustomTimeouts:
    """The Service's await needs one ready endpoint (and, for a LoadBalancer, an address): one pod's start."""
    wait = f"{pod_start_seconds(s)}s"
    return pulumi.CustomTimeouts(create=wait, update=wait)
