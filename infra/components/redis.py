"""Redis for the response cache and rate-limit counters the chat replicas share (REDIS_URL): one pod, no persistence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.components.aliases import formerly_under
from infra.components.chat_pod import CONTAINER_SECURITY
from infra.contract import COMMON_LABELS, REDIS_LABELS, REDIS_PORT

# A high UID so it cannot collide with a host account (checkov CKV_K8S_40); redis runs as any UID, and /data
# is an emptyDir owned through fsGroup.
REDIS_UID = 10001


@dataclass
class RedisArgs:
    namespace: pulumi.Input[str]
    namespace_name: str  # the plain name, for the URL the chat pods connect to
    image: str
    name_prefix: str = "clawbot"


class Redis(pulumi.ComponentResource):
    url: str  # REDIS_URL of the chat pods

    def __init__(self, name: str, args: RedisArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("clawbot:infra:Redis", name, None, opts)
        # ChatService held both objects before this component existed.
        child = pulumi.ResourceOptions(parent=self, aliases=formerly_under(opts))
        object_name = f"{args.name_prefix}-redis"
        labels = {**REDIS_LABELS, **COMMON_LABELS}
        metadata = {"name": object_name, "namespace": args.namespace, "labels": labels}
        self.deployment = k8s.apps.v1.Deployment(
            name, metadata=metadata, spec=_deployment_spec(args.image, labels), opts=child
        )
        self.service = k8s.core.v1.Service(
            f"{name}-service",
            metadata=metadata,
            spec={
                "type": "ClusterIP",
                "selector": dict(REDIS_LABELS),
                "ports": [{"name": "redis", "port": REDIS_PORT, "targetPort": "redis", "protocol": "TCP"}],
            },
            opts=child,
        )
        self.url = f"redis://{object_name}.{args.namespace_name}.svc.cluster.local:{REDIS_PORT}/0"
        self.register_outputs({"url": self.url})


def _deployment_spec(image: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "replicas": 1,
        "selector": {"matchLabels": dict(REDIS_LABELS)},
        "template": {
            "metadata": {"labels": labels},
            "spec": {
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": REDIS_UID,
                    "runAsGroup": REDIS_UID,
                    "fsGroup": REDIS_UID,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": "redis",
                        "image": image,
                        # Cache and counters only: losing them on restart is fine, so no persistence.
                        "args": [
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                            "--maxmemory",
                            "256mb",
                            "--maxmemory-policy",
                            "allkeys-lru",
                        ],
                        "ports": [{"name": "redis", "containerPort": REDIS_PORT, "protocol": "TCP"}],
                        "resources": {
                            "requests": {"cpu": "100m", "memory": "128Mi"},
                            "limits": {"cpu": "500m", "memory": "384Mi"},
                        },
                        "readinessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 5},
                        "livenessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 10},
                        "securityContext": {**CONTAINER_SECURITY, "runAsUser": REDIS_UID, "runAsGroup": REDIS_UID},
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    }
                ],
                "volumes": [{"name": "data", "emptyDir": {"sizeLimit": "512Mi"}}],
            },
        },
    }
