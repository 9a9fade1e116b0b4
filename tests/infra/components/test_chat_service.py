"""The chat Deployment: env and mounts exactly what app/ reads, restricted security, probes, no secret in plain sight."""

from __future__ import annotations

import json
from pathlib import PurePosixPath

from app.settings import ENV_VARS, load_settings
from infra.contract import CHAT_LABELS, HUB_OFFLINE_ENV
from infra.tools.mocks import LOAD_BALANCER_HOSTNAME
from infra.tools.synth import Synthesis, synthesize
from tests.infra.conftest import chat_container, pod_spec


def env_of(s: Synthesis) -> dict[str, str]:
    """The chat container's environment as the kubelet builds it: the ConfigMap, then `env` (values or Secret keys)."""
    container = chat_container(s)
    env: dict[str, str] = {}
    for source in container["envFrom"]:
        env.update(s.one("ConfigMap", source["configMapRef"]["name"]).manifest["data"])
    for e in container.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        env[e["name"]] = s.one("Secret", ref["name"]).manifest["stringData"][ref["key"]] if ref else e["value"]
    return env


def test_every_env_name_is_one_the_app_reads(prod: Synthesis, dev: Synthesis) -> None:
    # HF_HUB_OFFLINE is huggingface_hub's own switch, which app/inference/loader.py reads beside app.settings.
    for s in (prod, dev):
        assert set(env_of(s)) <= set(ENV_VARS) | {HUB_OFFLINE_ENV}, set(env_of(s)) - set(ENV_VARS)
        assert env_of(s)[HUB_OFFLINE_ENV] == "1"  # the chat pods never try the network for a model


def test_env_parses_with_the_app_settings_and_points_at_mounted_files(prod: Synthesis) -> None:
    env = env_of(prod)
    settings = load_settings(env)
    assert settings.app_env == "production" and settings.port == 18789 and settings.host == "0.0.0.0"
    assert settings.quantization == "nf4" and settings.max_tokens == 2048 and settings.max_batch_size == 32
    assert settings.dtype == "auto" and settings.prefix_cache_tokens == 8192  # stack defaults reach the app
    assert (
        settings.redis_url
        and settings.redis_url.get_secret_value() == "redis://clawbot-redis.clawbot.svc.cluster.local:6379/0"
    )
    mounts = {m["mountPath"]: m for m in chat_container(prod)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(prod)["volumes"]}
    # The key file is a mounted Secret; KMS unwraps its data key, so no KEK file is named or mounted.
    assert settings.key_encryption == "kms" and settings.kek_path is None and settings.api_key_path is not None
    mount = mounts[str(PurePosixPath(settings.api_key_path).parent)]
    items = volumes[mount["name"]]["secret"]["items"]
    assert [i["path"] for i in items] == [PurePosixPath(settings.api_key_path).name]
    assert (
        str(settings.data_dir) in mounts and "persistentVolumeClaim" in volumes[mounts[str(settings.data_dir)]["name"]]
    )
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


def test_dev_env_parses_too(dev: Synthesis) -> None:
    settings = load_settings(env_of(dev))
    assert settings.development and settings.redis_url is None
    # The data key the init step unwraps, in a memory volume.
    assert settings.key_encryption == "data-key-file" and settings.data_key_path is not None
    mounts = {m["mountPath"]: m for m in chat_container(dev)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(dev)["volumes"]}
    assert volumes[mounts[str(PurePosixPath(settings.data_key_path).parent)]["name"]]["emptyDir"]["medium"] == "Memory"


def test_pod_runs_restricted(prod: Synthesis) -> None:
    pod, container = pod_spec(prod), chat_container(prod)
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert (
        sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"] == {"drop": ["ALL"]}
    )
    assert pod["automountServiceAccountToken"] is False
    ns = prod.one("Namespace").manifest["metadata"]["labels"]
    assert ns["pod-security.kubernetes.io/enforce"] == "restricted"


def test_probes_give_the_model_time_to_load(prod: Synthesis) -> None:
    c = chat_container(prod)
    assert c["ports"][0] == {"name": "http", "containerPort": 18789, "protocol": "TCP"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http", "scheme": "HTTP"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http", "scheme": "HTTP"}
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/readyz"  # start-up ends when the model serves (test_rollout.py)
    assert startup["periodSeconds"] * startup["failureThreshold"] == prod.config["startupTimeoutSeconds"]
    assert "command" not in c and c["args"] == ["python", "-m", "app"]  # the image's tini entrypoint is kept


def test_rollout_never_drops_capacity_and_consolidation_leaves_loading_pods_alone(prod: Synthesis) -> None:
    spec = prod.one("Deployment", "clawbot").manifest["spec"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # Karpenter leaves the node alone for the start-up budget (the model load), then may drain it gracefully.
    assert (
        spec["template"]["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "12m"
    )  # startupTimeoutSeconds 720
    assert pod_spec(prod)["terminationGracePeriodSeconds"] >= 30
    pdb = prod.one("PodDisruptionBudget").manifest["spec"]
    # One budget over every chat pod, stable and canary alike: a drain never takes two serving pods at once.
    assert pdb["maxUnavailable"] == 1 and pdb["selector"]["matchLabels"] == CHAT_LABELS
    assert CHAT_LABELS.items() <= spec["selector"]["matchLabels"].items()


def test_data_volume_is_100gi_on_the_configured_class(prod: Synthesis, dev: Synthesis) -> None:
    pvc = prod.one("PersistentVolumeClaim", "clawbot-data").manifest["spec"]
    assert pvc["resources"]["requests"]["storage"] == "100Gi" and pvc["storageClassName"] == "efs-sc"
    assert pvc["accessModes"] == ["ReadWriteMany"]
    assert dev.one("PersistentVolumeClaim", "clawbot-data").manifest["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_no_secret_value_outside_secrets(prod: Synthesis, dev: Synthesis) -> None:
    for s in (prod, dev):
        secrets = [s.outputs["apiKey"], *(k.manifest["stringData"]["kek"] for k in s.find("Secret", "clawbot-kek"))]
        plain = json.dumps([o.manifest for o in s.objects if o.kind != "Secret"])
        plain += json.dumps({k: v for k, v in s.outputs.items() if k not in s.secret_outputs})
        for value in secrets:
            assert value not in plain
        for res in s.resources:  # every random value: API and JWT keys, the KEK, the data key
            for field in ("result", "base64"):
                if res.state.get(field):
                    assert res.state[field] not in plain


def test_endpoint_url_is_the_tls_hostname_on_18789_and_names_the_load_balancer(prod: Synthesis, dev: Synthesis) -> None:
    assert prod.outputs["endpointUrl"] == "https://chat.example.com:18789"
    assert prod.outputs["loadBalancerHostname"] == LOAD_BALANCER_HOSTNAME  # where chat.example.com's record points
    assert dev.outputs["endpointUrl"] == "http://clawbot.clawbot-dev.svc.cluster.local:18789"
    assert dev.outputs["loadBalancerHostname"] == ""
    assert prod.outputs["namespace"] == "clawbot" and dev.outputs["namespace"] == "clawbot-dev"


def test_redis_runs_restricted_without_persistence(prod: Synthesis, dev: Synthesis) -> None:
    redis = pod_spec(prod, "clawbot-redis")
    (c,) = redis["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] and redis["securityContext"]["runAsNonRoot"]
    assert "--appendonly" in c["args"]
    assert prod.one("Service", "clawbot-redis").manifest["spec"]["type"] == "ClusterIP"
    assert dev.find("Deployment", "clawbot-redis") == []


def test_a_shared_data_volume_switches_the_conversation_store_off_wal(dev: Synthesis) -> None:
    # A ReadWriteMany volume shared by pods on several nodes, conversations in SQLite: WAL's shared-memory index
    # would not be shared. (prod keeps its conversations in PostgreSQL: test_database.py.)
    shared = synthesize("prod", overrides={"minReplicas": 1, "maxReplicas": 1, "conversationDatabaseUrl": ""})
    assert shared.one("PersistentVolumeClaim", "clawbot-data").manifest["spec"]["accessModes"] == ["ReadWriteMany"]
    assert load_settings(env_of(shared)).conversation_journal == "delete"
    assert load_settings({**env_of(dev), "APP_ENV": "development"}).conversation_journal == "wal"
