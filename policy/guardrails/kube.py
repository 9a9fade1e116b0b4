"""Reading Kubernetes objects as the policy engine hands them over: type tokens, pod specs, containers.

During `pulumi preview` some values are not known yet; the engine wraps properties in a proxy
that raises `UnknownValueError` when one is read. Resource policies let that propagate (the
SDK turns it into an advisory "can't be checked during preview"); the helpers here that walk
many objects at once (stack policies) use `known()` so that one unknown value does not switch
the whole check off.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pulumi_policy.proxy import UnknownValueError

CHAT_APP_LABEL = ("app.kubernetes.io/name", "clawbot")
SERVICE_PORT = 18789

# Kinds whose objects carry a pod template (or are a pod), and where that template lives.
_POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
WORKLOAD_KINDS = frozenset(_POD_SPEC_PATHS)


def kind_of(resource_type: str) -> str | None:
    """`kubernetes:apps/v1:Deployment` -> `Deployment`; None for anything that is not a Kubernetes object."""
    parts = resource_type.split(":")
    if len(parts) != 3 or parts[0] != "kubernetes":
        return None
    return parts[2]


def known(mapping: Any, key: str) -> Any:
    """mapping[key], or None when it is absent, not a mapping, or not known until the update runs."""
    if not isinstance(mapping, Mapping):
        return None
    try:
        return mapping.get(key)
    except UnknownValueError:
        return None


def known_items(mapping: Any) -> Iterator[tuple[str, Any]]:
    """The (key, value) pairs of a mapping whose values are known; unknown ones are skipped."""
    if not isinstance(mapping, Mapping):
        return
    for key in list(mapping):
        value = known(mapping, key)
        if value is not None:
            yield key, value


def known_list(value: Any) -> list[Any]:
    """The known elements of a list-like value (an unknown list counts as empty)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return []
    out = []
    for i in range(len(value)):
        try:
            out.append(value[i])
        except UnknownValueError:
            continue
    return out


def first_set(*values: Any) -> Any:
    """The first value that is not None: a container's securityContext field overrides the pod's."""
    for value in values:
        if value is not None:
            return value
    return None


def display_name(props: Mapping[str, Any], fallback: str) -> str:
    """`namespace/name` from metadata where known, else the Pulumi resource name."""
    metadata = known(props, "metadata")
    name = known(metadata, "name") or fallback
    namespace = known(metadata, "namespace")
    return f"{namespace}/{name}" if namespace else str(name)


@dataclass(frozen=True)
class Workload:
    kind: str
    name: str
    props: Mapping[str, Any]
    pod_spec: Mapping[str, Any]

    def containers(self, include_init: bool = True) -> list[Mapping[str, Any]]:
        keys = ("containers", "initContainers", "ephemeralContainers") if include_init else ("containers",)
        out: list[Mapping[str, Any]] = []
        for key in keys:
            out.extend(c for c in known_list(known(self.pod_spec, key)) if isinstance(c, Mapping))
        return out

    def labels(self) -> dict[str, Any]:
        """Object labels merged with the pod template's: either marks the chat Deployment."""
        labels = dict(known_items(known(known(self.props, "metadata"), "labels")))
        template = known(known(self.props, "spec"), "template")
        labels.update(dict(known_items(known(known(template, "metadata"), "labels"))))
        return labels


def workload(resource_type: str, props: Mapping[str, Any], fallback_name: str) -> Workload | None:
    """The pod-carrying view of a resource, or None for kinds that run no containers."""
    kind = kind_of(resource_type)
    if kind not in _POD_SPEC_PATHS:
        return None
    node: Any = props
    for key in _POD_SPEC_PATHS[kind]:
        node = known(node, key)
    if not isinstance(node, Mapping):
        return None
    return Workload(kind=kind, name=display_name(props, fallback_name), props=props, pod_spec=node)


def container_label(container: Mapping[str, Any]) -> str:
    return f"container {known(container, 'name') or '<unnamed>'!r}"
