"""The model download Job: it fetches a hub model into the data volume once, with the app's own command, before the
chat pods roll; they then load that copy without the network. Its egress is tested with the firewall's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infra.contract import CHAT_LABELS, HUB_OFFLINE_ENV
from infra.tools.synth import Synthesis, synthesize
from tests.infra.conftest import chat_container, pod_spec

HUB_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def job_of(s: Synthesis) -> dict[str, Any]:
    return s.one("Job").manifest


def container_of(s: Synthesis) -> dict[str, Any]:
    (container,) = job_of(s)["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_prod_fetches_its_hub_model_with_the_apps_command_in_the_chat_image_onto_the_chat_pods_volume(
    prod: Synthesis,
) -> None:
    job, c = job_of(prod), container_of(prod)
    assert c["image"] == chat_container(prod)["image"] and c["args"] == ["python", "-m", "app.load_model", "--no-load"]
    assert env_of(c) == {"MODEL_PATH": "Qwen/Qwen3-8B", "DATA_DIR": "/app/data"}

    def claims(spec: dict[str, Any]) -> set[str]:
        return {v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v}

    assert claims(job["spec"]["template"]["spec"]) == claims(pod_spec(prod)) == {"clawbot-data"}
    assert job["spec"]["activeDeadlineSeconds"] == 3600 and job["spec"]["backoffLimit"] == 3
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # Not a chat pod: the Service, the PDB and the chat policies never select it, and it asks for no GPU.
    assert not CHAT_LABELS.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert "nvidia.com/gpu" not in c["resources"]["limits"] and "tolerations" not in job["spec"]["template"]["spec"]


def test_it_runs_restricted_like_the_chat_pods(prod: Synthesis) -> None:
    pod, c = job_of(prod)["spec"]["template"]["spec"], container_of(prod)
    assert pod["securityContext"] == pod_spec(prod)["securityContext"] and pod["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert (
        sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"] == {"drop": ["ALL"]}
    )


def test_pulumi_runs_it_after_the_claim_and_before_the_deployments_and_waits_as_long_as_it_may_run(
    prod: Synthesis,
) -> None:
    job = prod.one("Job")
    assert job.resource_name == "chat-model" and "chat-data" in job.depends_on
    assert job.options.custom_timeouts == {"create": "4500s", "update": "4500s"}  # the deadline + scheduling and pull
    assert "chat-model" in prod.one("Deployment", "clawbot").depends_on
    canary = synthesize(
        "prod", overrides={"minReplicas": 9, "canary": {"image": "ghcr.io/clawbot/clawbot:0.2.0", "weight": 10}}
    )
    assert "chat-model" in canary.one("Deployment", "clawbot-canary").depends_on


def test_a_new_model_or_image_is_a_new_job_and_the_same_one_is_left_alone(prod: Synthesis) -> None:
    same = synthesize("prod")
    other_model = synthesize("prod", overrides={"modelPath": "Qwen/Qwen3-4B"})
    other_image = synthesize("prod", overrides={"image": "ghcr.io/clawbot/clawbot:0.2.0"})
    names = {s.one("Job").name for s in (prod, same, other_model, other_image)}
    assert prod.one("Job").name == same.one("Job").name and len(names) == 3


def test_the_hub_token_reaches_the_job_alone() -> None:
    s = synthesize("prod", overrides={"modelHubAuth": True})
    token = env_of(container_of(s))["HF_TOKEN"]
    assert token == {"secretKeyRef": {"name": "clawbot-hub-token", "key": "token"}}
    assert "stringData" in s.one("Secret", "clawbot-hub-token").manifest
    assert "clawbot-hub-token" not in str(s.one("Deployment", "clawbot").manifest)


def test_a_local_or_embedded_model_needs_no_job(dev: Synthesis) -> None:
    assert dev.find("Job") == []
    assert (
        synthesize("prod", overrides={"modelPath": "/app/data/models/qwen3-8b", "modelHubEgressCidrs": []}).find("Job")
        == []
    )


def test_on_a_read_write_once_volume_it_prefers_the_chat_pods_node() -> None:
    s = synthesize("dev", overrides={"modelPath": HUB_MODEL, "modelHubEgressCidrs": ["0.0.0.0/0"]})
    (term,) = job_of(s)["spec"]["template"]["spec"]["affinity"]["podAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() >= CHAT_LABELS.items()


def test_what_the_job_leaves_on_the_volume_is_what_the_chat_pods_load_offline(
    prod: Synthesis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Job's command with the Job's env (DATA_DIR on a temporary volume), the hub stood in for; then the chat
    pods' resolution with their env, offline, finds that copy without asking the hub again."""
    import huggingface_hub

    from app.inference.loader import resolve_model_dir
    from app.load_model import main

    fetched: list[str] = []

    def hub(repo_id: str, *, local_dir: Path, token: str | None = None, allow_patterns: Any = None) -> str:
        fetched.append(repo_id)
        Path(local_dir, "config.json").write_text("{}")
        Path(local_dir, "model.safetensors").write_bytes(b"weights")
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    data = tmp_path / "data"
    for name, value in env_of(container_of(prod)).items():
        monkeypatch.setenv(name, str(data) if name == "DATA_DIR" else value)
    monkeypatch.delenv(HUB_OFFLINE_ENV, raising=False)
    assert main(list(container_of(prod)["args"][3:])) == 0 and fetched == ["Qwen/Qwen3-8B"]

    chat_env = prod.one("ConfigMap", "clawbot-config").manifest["data"]
    monkeypatch.setenv(HUB_OFFLINE_ENV, chat_env[HUB_OFFLINE_ENV])
    served = resolve_model_dir(chat_env["MODEL_PATH"], data, progress=False)
    assert (served / "model.safetensors").read_bytes() == b"weights" and fetched == ["Qwen/Qwen3-8B"]
