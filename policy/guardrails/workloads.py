"""Policies on what runs in pods: non-root, unprivileged, bounded, GPU pods schedulable, the chat pods probed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Severity,
)

from .kube import (
    CHAT_APP_LABEL,
    SERVICE_PORT,
    Workload,
    container_label,
    first_set,
    known,
    known_list,
    workload,
)

GPU_RESOURCE = "nvidia.com/gpu"
# The taint the GPU nodes carry (infra's gpuTaintKey/Value/Effect defaults); override in the pack config.
GPU_TAINT_DEFAULTS = {"gpuTaintKey": "nvidia.com/gpu", "gpuTaintValue": "true", "gpuTaintEffect": "NoSchedule"}
PROBE_HANDLERS = ("httpGet", "tcpSocket", "exec", "grpc")
# Workloads allowed to run as root, as "Kind namespace/name". The NVIDIA device plugin creates its socket in the
# kubelet's root-owned /var/lib/kubelet/device-plugins and cannot work otherwise; it still runs unprivileged.
ROOT_EXEMPT_DEFAULT = ["DaemonSet kube-system/nvidia-device-plugin"]


def _workload(args: ResourceValidationArgs) -> Workload | None:
    return workload(args.resource_type, args.props, args.name)


def validate_non_root(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    w = _workload(args)
    if w is None or f"{w.kind} {w.name}" in args.get_config().get("exemptWorkloads", ROOT_EXEMPT_DEFAULT):
        return
    pod_sc = known(w.pod_spec, "securityContext")
    for c in w.containers():
        sc = known(c, "securityContext")
        run_as_user = first_set(known(sc, "runAsUser"), known(pod_sc, "runAsUser"))
        non_root = first_set(known(sc, "runAsNonRoot"), known(pod_sc, "runAsNonRoot"))
        where = f"{w.kind} {w.name} {container_label(c)}"
        if run_as_user == 0:
            report_violation(f"{where} runs as root (runAsUser: 0); use a non-zero UID such as 10001", None)
        elif non_root is not True:
            report_violation(
                f"{where} may run as root: set securityContext.runAsNonRoot: true on the pod or the container", None
            )


def validate_unprivileged(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    w = _workload(args)
    if w is None:
        return
    for c in w.containers():
        sc = known(c, "securityContext")
        where = f"{w.kind} {w.name} {container_label(c)}"
        if known(sc, "privileged") is True:
            report_violation(f"{where} is privileged (securityContext.privileged: true); remove it", None)
        # Kubernetes defaults allowPrivilegeEscalation to true, so only an explicit false is safe.
        if known(sc, "allowPrivilegeEscalation") is not False:
            report_violation(
                f"{where} allows privilege escalation: set securityContext.allowPrivilegeEscalation: false", None
            )


def validate_resource_limits(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    w = _workload(args)
    if w is None:
        return
    for c in w.containers():
        limits = known(known(c, "resources"), "limits")
        missing = [r for r in ("cpu", "memory") if known(limits, r) in (None, "", 0, "0")]
        if missing:
            report_violation(
                f"{w.kind} {w.name} {container_label(c)} has no {' or '.join(missing)} limit: "
                f"set resources.limits.{missing[0]} so one pod cannot starve its node",
                None,
            )


def _asks_for_gpu(container: Mapping[str, Any]) -> bool:
    resources = known(container, "resources")
    return any(known(known(resources, part), GPU_RESOURCE) is not None for part in ("limits", "requests"))


def _tolerates(toleration: Any, key: str, value: str, effect: str) -> bool:
    """Kubernetes' matching rule: same key (or an empty key with Exists), Exists or an equal value, same or any effect."""
    t_key = known(toleration, "key") or ""
    operator = known(toleration, "operator") or "Equal"
    t_effect = known(toleration, "effect") or ""
    if t_effect not in ("", effect):
        return False
    if t_key == "":
        return operator == "Exists"
    if t_key != key:
        return False
    return operator == "Exists" or str(known(toleration, "value") or "") == value


def validate_gpu_scheduling(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    w = _workload(args)
    if w is None:
        return
    gpu_containers = [c for c in w.containers() if _asks_for_gpu(c)]
    if not gpu_containers:
        return
    config = {**GPU_TAINT_DEFAULTS, **args.get_config()}
    key, value, effect = (str(config[k]) for k in ("gpuTaintKey", "gpuTaintValue", "gpuTaintEffect"))
    for c in gpu_containers:
        if known(known(known(c, "resources"), "limits"), GPU_RESOURCE) in (None, "", 0, "0"):
            report_violation(
                f"{w.kind} {w.name} {container_label(c)} requests {GPU_RESOURCE} without a limit; "
                f"extended resources must be set in resources.limits",
                None,
            )
    tolerations = known_list(known(w.pod_spec, "tolerations"))
    if not any(_tolerates(t, key, value, effect) for t in tolerations):
        report_violation(
            f"{w.kind} {w.name} asks for a GPU but does not tolerate the GPU nodes' taint {key}={value}:{effect}, "
            f"so it would stay Pending: add tolerations: [{{key: {key}, operator: Equal, value: \"{value}\", "
            f"effect: {effect}}}] (a different value or effect does not match)",
            None,
        )


def _serving_containers(w: Workload) -> list[Mapping[str, Any]]:
    """The containers that expose the service port; all of them when none declares a port."""
    containers = w.containers(include_init=False)
    serving = [
        c for c in containers if any(known(p, "containerPort") == SERVICE_PORT for p in known_list(known(c, "ports")))
    ]
    return serving or containers


def validate_chat_readiness(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    w = _workload(args)
    if w is None or w.kind != "Deployment":
        return
    key, value = CHAT_APP_LABEL
    if w.labels().get(key) != value:
        return
    containers = _serving_containers(w)
    if not containers:
        report_violation(f"chat Deployment {w.name} has no containers", None)
    for c in containers:
        probe = known(c, "readinessProbe")
        if not any(known(probe, handler) for handler in PROBE_HANDLERS):
            report_violation(
                f"chat Deployment {w.name} {container_label(c)} has no readinessProbe: without one, pods get "
                f"traffic before the model is loaded. Probe GET /readyz on port {SERVICE_PORT}",
                None,
            )


non_root_containers = ResourceValidationPolicy(
    name="containers-run-as-non-root",
    description="Every container runs as a non-root user (runAsNonRoot: true, runAsUser not 0).",
    validate=validate_non_root,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.HIGH,
    config_schema=PolicyConfigSchema(
        properties={
            "exemptWorkloads": {
                "type": "array",
                "items": {"type": "string"},
                "default": ROOT_EXEMPT_DEFAULT,
                "description": "Workloads that must run as root, as 'Kind namespace/name', each for a stated reason.",
            }
        }
    ),
)

unprivileged_containers = ResourceValidationPolicy(
    name="containers-unprivileged",
    description="No container is privileged or allowed to escalate privileges.",
    validate=validate_unprivileged,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.HIGH,
)

resource_limits = ResourceValidationPolicy(
    name="containers-have-limits",
    description="Every container sets cpu and memory limits.",
    validate=validate_resource_limits,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.MEDIUM,
)

gpu_scheduling = ResourceValidationPolicy(
    name="gpu-pods-tolerate-and-limit",
    description=f"A pod asking for {GPU_RESOURCE} tolerates the GPU nodes' taint and sets the GPU limit.",
    validate=validate_gpu_scheduling,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.MEDIUM,
    config_schema=PolicyConfigSchema(
        properties={
            "gpuTaintKey": {"type": "string", "default": GPU_TAINT_DEFAULTS["gpuTaintKey"]},
            "gpuTaintValue": {"type": "string", "default": GPU_TAINT_DEFAULTS["gpuTaintValue"]},
            "gpuTaintEffect": {
                "type": "string",
                "default": GPU_TAINT_DEFAULTS["gpuTaintEffect"],
                "enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"],
            },
        }
    ),
)

chat_readiness = ResourceValidationPolicy(
    name="chat-deployment-has-readiness-probe",
    description="The chat Deployment (app.kubernetes.io/name=clawbot) has a readiness probe.",
    validate=validate_chat_readiness,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.HIGH,
)
