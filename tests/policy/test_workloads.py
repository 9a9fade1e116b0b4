"""Container policies: non-root, unprivileged, bounded, GPU pods schedulable, chat pods probed."""

from __future__ import annotations

from typing import Any

import pytest
from guardrails.workloads import (
    chat_readiness,
    gpu_scheduling,
    non_root_containers,
    resource_limits,
    unprivileged_containers,
)
from pulumi_policy import ResourceValidationPolicy

from .conftest import Violations, resource_args
from .objects import container, deployment, without


def check(
    policy: ResourceValidationPolicy,
    props: dict[str, Any],
    kind: str = "Deployment",
    config: dict[str, Any] | None = None,
) -> Violations:
    v = Violations()
    policy.validate(resource_args(kind, props, config), v)
    return v


ALL = [non_root_containers, unprivileged_containers, resource_limits, gpu_scheduling, chat_readiness]


@pytest.mark.parametrize("policy", ALL, ids=lambda p: p.name)
def test_compliant_chat_deployment_passes_every_workload_policy(policy: ResourceValidationPolicy) -> None:
    assert check(policy, deployment()) == []


# --- non-root -------------------------------------------------------------------------------------------


def test_container_without_run_as_non_root_fails() -> None:
    c = container(securityContext={"allowPrivilegeEscalation": False})
    v = check(non_root_containers, deployment(c))
    assert len(v) == 1 and "clawbot/clawbot" in v.messages[0] and "'chat'" in v.messages[0]


def test_pod_level_run_as_non_root_covers_its_containers() -> None:
    c = container(securityContext={"allowPrivilegeEscalation": False})
    assert check(non_root_containers, deployment(c, pod_security={"runAsNonRoot": True, "runAsUser": 1000})) == []


def test_run_as_user_zero_fails_even_with_run_as_non_root() -> None:
    c = container(securityContext={"runAsNonRoot": True, "runAsUser": 0, "allowPrivilegeEscalation": False})
    v = check(non_root_containers, deployment(c))
    assert len(v) == 1 and "runAsUser: 0" in v.messages[0]


def test_container_setting_overrides_the_pod() -> None:
    c = container(securityContext={"runAsNonRoot": False, "allowPrivilegeEscalation": False})
    assert check(non_root_containers, deployment(c, pod_security={"runAsNonRoot": True})) != []


def test_init_containers_are_checked_too() -> None:
    init = container(name="fetch-model", securityContext={})
    v = check(non_root_containers, deployment(container(), init_containers=[init]))
    assert len(v) == 1 and "'fetch-model'" in v.messages[0]


def test_cron_job_pods_are_checked() -> None:
    pod = {"containers": [container(name="rotate", securityContext={})]}
    cron = {
        "metadata": {"name": "rotate-keys"},
        "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {"spec": pod}}}},
    }
    v = check(non_root_containers, cron, kind="CronJob")
    assert len(v) == 1 and "CronJob rotate-keys" in v.messages[0]


def device_plugin(name: str = "nvidia-device-plugin") -> dict[str, Any]:
    c = container(name="nvidia-device-plugin", securityContext={"allowPrivilegeEscalation": False})
    return {"metadata": {"name": name, "namespace": "kube-system"}, "spec": {"template": {"spec": {"containers": [c]}}}}


def test_only_the_listed_device_plugin_may_run_as_root() -> None:
    assert check(non_root_containers, device_plugin(), kind="DaemonSet") == []
    assert len(check(non_root_containers, device_plugin("node-agent"), kind="DaemonSet")) == 1
    # The exemption covers the root check only: the plugin still may not escalate.
    escalating = device_plugin()
    escalating["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {}
    assert check(unprivileged_containers, escalating, kind="DaemonSet") != []
    assert check(non_root_containers, device_plugin(), kind="DaemonSet", config={"exemptWorkloads": []}) != []


# --- unprivileged ---------------------------------------------------------------------------------------


def test_privileged_container_fails() -> None:
    c = container(securityContext={"runAsNonRoot": True, "privileged": True, "allowPrivilegeEscalation": False})
    v = check(unprivileged_containers, deployment(c))
    assert len(v) == 1 and "privileged" in v.messages[0]


def test_privilege_escalation_must_be_explicitly_off() -> None:
    explicit_true = container(securityContext={"runAsNonRoot": True, "allowPrivilegeEscalation": True})
    unset = container(securityContext={"runAsNonRoot": True})
    assert "allowPrivilegeEscalation: false" in check(unprivileged_containers, deployment(explicit_true)).messages[0]
    assert len(check(unprivileged_containers, deployment(unset))) == 1


# --- limits ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["cpu", "memory"])
def test_missing_cpu_or_memory_limit_fails_naming_it(missing: str) -> None:
    limits = {"cpu": "2", "memory": "4Gi"}
    del limits[missing]
    v = check(resource_limits, deployment(container(resources={"limits": limits})))
    assert len(v) == 1 and f"no {missing} limit" in v.messages[0]


def test_requests_alone_are_not_limits() -> None:
    v = check(resource_limits, deployment(container(resources={"requests": {"cpu": "1", "memory": "1Gi"}})))
    assert len(v) == 1 and "cpu or memory" in v.messages[0]


def test_resources_that_run_no_pods_are_ignored() -> None:
    assert check(resource_limits, {"metadata": {"name": "svc"}, "spec": {"ports": []}}, kind="Service") == []


# --- GPU ------------------------------------------------------------------------------------------------

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def gpu_container(limit: bool = True) -> dict[str, Any]:
    resources: dict[str, Any] = {"limits": {"cpu": "4", "memory": "16Gi"}, "requests": {"nvidia.com/gpu": 1}}
    if limit:
        resources["limits"]["nvidia.com/gpu"] = 1
    return container(resources=resources)


def test_gpu_pod_with_toleration_and_limit_passes() -> None:
    assert check(gpu_scheduling, deployment(gpu_container(), tolerations=[GPU_TOLERATION])) == []
    equal = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
    assert check(gpu_scheduling, deployment(gpu_container(), tolerations=[equal])) == []
    anything = {"operator": "Exists"}
    assert check(gpu_scheduling, deployment(gpu_container(), tolerations=[anything])) == []


def test_toleration_with_another_value_does_not_match_the_taint() -> None:
    # nvidia.com/gpu=true:NoSchedule on the nodes; a =present toleration leaves the pod Pending forever.
    present = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}
    v = check(gpu_scheduling, deployment(gpu_container(), tolerations=[present]))
    assert len(v) == 1 and "nvidia.com/gpu=true:NoSchedule" in v.messages[0]


def test_taint_comes_from_the_pack_config() -> None:
    config = {"gpuTaintKey": "dedicated", "gpuTaintValue": "gpu", "gpuTaintEffect": "NoExecute"}
    custom = {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoExecute"}
    assert check(gpu_scheduling, deployment(gpu_container(), tolerations=[custom]), config=config) == []
    assert check(gpu_scheduling, deployment(gpu_container(), tolerations=[GPU_TOLERATION]), config=config) != []


def test_gpu_pod_without_toleration_fails() -> None:
    other = {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}
    v = check(gpu_scheduling, deployment(gpu_container(), tolerations=[other]))
    assert len(v) == 1 and "does not tolerate" in v.messages[0]
    wrong_effect = {**GPU_TOLERATION, "effect": "NoExecute"}
    assert check(gpu_scheduling, deployment(gpu_container(), tolerations=[wrong_effect])) != []


def test_gpu_request_without_limit_fails() -> None:
    v = check(gpu_scheduling, deployment(gpu_container(limit=False), tolerations=[GPU_TOLERATION]))
    assert len(v) == 1 and "without a limit" in v.messages[0]


def test_cpu_pod_needs_no_gpu_toleration() -> None:
    assert check(gpu_scheduling, deployment(container(), tolerations=[])) == []


# --- readiness ------------------------------------------------------------------------------------------


def test_chat_deployment_without_readiness_probe_fails() -> None:
    v = check(chat_readiness, deployment(without(container(), "readinessProbe")))
    assert len(v) == 1 and "/readyz" in v.messages[0] and "'chat'" in v.messages[0]


def test_empty_probe_does_not_count() -> None:
    assert check(chat_readiness, deployment(container(readinessProbe={"periodSeconds": 5}))) != []


def test_sidecar_without_ports_does_not_need_the_chat_probe() -> None:
    sidecar = without(without(container(name="log-shipper"), "readinessProbe"), "ports")
    assert check(chat_readiness, deployment(container(), sidecar)) == []


def test_other_deployments_are_not_the_chat_deployment() -> None:
    other = deployment(without(container(), "readinessProbe"), labels={"app.kubernetes.io/name": "redis"})
    assert check(chat_readiness, other) == []
