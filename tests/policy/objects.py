"""Small Kubernetes objects for policy tests: a compliant chat Deployment and ways to break it."""

from __future__ import annotations

import copy
from typing import Any

CHAT_LABELS = {"app.kubernetes.io/name": "clawbot"}


def container(**overrides: Any) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": "chat",
        "image": "ghcr.io/example/clawbot:abc123",
        "ports": [{"containerPort": 18789, "name": "http"}],
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "allowPrivilegeEscalation": False},
        "resources": {"limits": {"cpu": "2", "memory": "4Gi"}, "requests": {"cpu": "1", "memory": "2Gi"}},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": 18789}},
    }
    c.update(overrides)
    return c


def deployment(
    *containers: dict[str, Any],
    labels: dict[str, str] | None = None,
    pod_security: dict[str, Any] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
    init_containers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {"containers": list(containers) or [container()]}
    if pod_security is not None:
        pod_spec["securityContext"] = pod_security
    if tolerations is not None:
        pod_spec["tolerations"] = tolerations
    if init_containers is not None:
        pod_spec["initContainers"] = init_containers
    labels = CHAT_LABELS if labels is None else labels
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "clawbot", "namespace": "clawbot", "labels": dict(labels)},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": dict(labels)},
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }


def without(obj: dict[str, Any], *path: str) -> dict[str, Any]:
    """A deep copy of obj with the key at path removed."""
    out = copy.deepcopy(obj)
    node = out
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return out
