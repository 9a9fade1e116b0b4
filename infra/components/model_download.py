"""ModelDownload: the Job that fetches a hub model into the data volume once, so the chat pods never go online.

It runs `python -m app.load_model --no-load` in the chat image, the app's own download into DATA_DIR/models/, where
the server's loader finds it (HF_HUB_OFFLINE keeps the chat pods from trying the network themselves). Its egress is
the only internet egress of the app: HTTPS to the hub's addresses, or through a proxy, or with Cilium to the hub's
names (ServiceFirewall writes those policies for the labels here). The Job's name carries a digest of what it
fetches, so a new model or image is a new Job that ChatService's Deployments wait for, and an unchanged one is left
alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.components.chat_pod import CONTAINER_SECURITY, pod_security_context
from infra.components.gpu_node_pool import PodPlacement
from infra.contract import (
    APP_UID,
    CHAT_LABELS,
    COMMON_LABELS,
    DATA_DIR,
    MODEL_DOWNLOAD_LABELS,
    STABLE,
    TMP_DIR,
    TRACK_LABEL,
)
from infra.settings.stack import StackSettings

HUB_TOKEN_KEY = "token"
# Retries of a failed download (a dropped connection); snapshot_download resumes what it already has.
BACKOFF_LIMIT = 3
# Scheduling the pod and pulling the chat image (CUDA layers are large), on top of the download itself.
SCHEDULING_BUDGET_S = 900


@dataclass
class ModelDownloadArgs:
    settings: StackSettings
    namespace: pulumi.Input[str]
    claim_name: pulumi.Input[str]
    placement: PodPlacement
    hub_token: pulumi.Output[str] | None = None  # with modelHubAuth: the read token, a secret Output
    depends_on: tuple[pulumi.Resource, ...] = ()  # the data claim
    name_prefix: str = "clawbot"


def job_name(settings: StackSettings, prefix: str) -> str:
    """`<prefix>-model-<digest>`: the digest of what the Job fetches and how, so a change makes a new Job."""
    what = {
        "model": settings.model.path,
        "image": settings.release.image,
        "proxy": settings.network.model_hub.proxy,
        "token": settings.model.hub_auth,
    }
    return f"{prefix}-model-{hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:10]}"


def _env(s: StackSettings, token_secret: str | None) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": "MODEL_PATH", "value": s.model.path}, {"name": "DATA_DIR", "value": DATA_DIR}]
    if s.network.model_hub.proxy:
        proxy = s.network.model_hub.proxy
        env += [
            {"name": "HTTPS_PROXY", "value": proxy},
            {"name": "HTTP_PROXY", "value": proxy},
            {"name": "NO_PROXY", "value": ".svc,.cluster.local,localhost,127.0.0.1"},
        ]
    if token_secret:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": token_secret, "key": HUB_TOKEN_KEY}}})
    return env


def _affinity(s: StackSettings) -> dict[str, Any] | None:
    """A ReadWriteOnce volume attaches to one node: prefer the node the chat pods mount it on (there are none yet on a
    first deployment, so this cannot be a requirement)."""
    if s.data_volume.access_mode != "ReadWriteOnce":
        return None
    return {
        "podAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "labelSelector": {"matchLabels": {**CHAT_LABELS, TRACK_LABEL: STABLE}},
                        "topologyKey": "kubernetes.io/hostname",
                    },
                }
            ]
        }
    }


def job_spec(
    s: StackSettings, claim_name: pulumi.Input[str], placement: PodPlacement, token_secret: str | None
) -> dict[str, Any]:
    labels = {**MODEL_DOWNLOAD_LABELS, **COMMON_LABELS}
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [
            {
                "name": "download",
                "image": s.release.image,
                "imagePullPolicy": s.pod.image_pull_policy,
                # args, not command: the image's ENTRYPOINT (tini) stays PID 1. --no-load: fetch, do not load on a GPU.
                "args": ["python", "-m", "app.load_model", "--no-load"],
                "env": _env(s, token_secret),
                "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
                "securityContext": {**CONTAINER_SECURITY, "runAsUser": APP_UID, "runAsGroup": APP_UID},
                "volumeMounts": [{"name": "data", "mountPath": DATA_DIR}, {"name": "tmp", "mountPath": TMP_DIR}],
            }
        ],
        "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": claim_name}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}},
        ],
    }
    affinity = _affinity(s)
    if affinity:
        # Beside the chat pods means on their (GPU) node, which only takes pods that tolerate its taint.
        pod["affinity"] = affinity
        if placement.tolerations:
            pod["tolerations"] = [dict(t) for t in placement.tolerations]
    return {
        "backoffLimit": BACKOFF_LIMIT,
        "activeDeadlineSeconds": s.model.download_timeout_seconds,
        "template": {"metadata": {"labels": labels}, "spec": pod},
    }


class ModelDownload(pulumi.ComponentResource):
    job_name: str

    def __init__(self, name: str, args: ModelDownloadArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("clawbot:infra:ModelDownload", name, None, opts)
        s, prefix = args.settings, args.name_prefix
        labels = {**MODEL_DOWNLOAD_LABELS, **COMMON_LABELS}
        self.hub_token = None
        if args.hub_token is not None:
            # The Job alone reads it; the chat pods never download, so they never get it.
            self.hub_token = k8s.core.v1.Secret(
                f"{name}-hub-token",
                metadata={"name": f"{prefix}-hub-token", "namespace": args.namespace, "labels": labels},
                type="Opaque",
                string_data={HUB_TOKEN_KEY: args.hub_token},
                opts=pulumi.ResourceOptions(parent=self),
            )
        self.job_name = job_name(s, prefix)
        wait = f"{s.model.download_timeout_seconds + SCHEDULING_BUDGET_S}s"
        self.job = k8s.batch.v1.Job(
            name,
            metadata={"name": self.job_name, "namespace": args.namespace, "labels": labels},
            spec=job_spec(s, args.claim_name, args.placement, f"{prefix}-hub-token" if self.hub_token else None),
            # Pulumi waits for the Job to complete; the chat Deployments wait for this resource.
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[*args.depends_on, *([self.hub_token] if self.hub_token else [])],
                custom_timeouts=pulumi.CustomTimeouts(create=wait, update=wait),
            ),
        )
        self.register_outputs({"jobName": self.job_name})
