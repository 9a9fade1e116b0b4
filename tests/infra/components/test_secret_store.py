"""The secret store: the key file it writes opens with app/'s key ring and holds the API key the stack hands out, and
its key-encryption key is never in the Secret store, namespace and pod of the sealed keys.

KMS mode (prod) is checked against a real local KMS (moto's server, tests/aws_server.py): the stack's `kmsDataKey` is
made by the key CLI there, the program seals to it, and the key file opens only through KMS Decrypt. Namespace mode
(dev) is checked by running the init step the pod spec names against a stand-in API server that serves the KEK
Secret the program made, and answers only what the program's Role allows.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest

from app.access.keyfile import KeyFileError, open_key_file
from app.access.keyring import DataKeyFile, KeyRing, contents_of, digest, parse_time
from app.access.kms import KmsUnsealer
from infra.components.secret_store import DAY_S, rotation_schedule
from infra.contract import API_KEY_PATH, DATA_KEY_PATH, SERVICE_ACCOUNT_DIR
from infra.tools.synth import Synthesis, synthesize
from tests.aws_server import aws_env, aws_server  # noqa: F401  (fixtures)
from tests.infra.api_server import allowed, stand_in_api_server
from tests.infra.conftest import chat_container, pod_spec

ROOT = Path(__file__).resolve().parents[3]


def secret_file(s: Synthesis, secret: str, key: str) -> str:
    return s.one("Secret", secret).manifest["stringData"][key]


def kms_data_key(env: dict[str, str]) -> str:
    """What an operator runs once: a KMS key, and `python -m app.keys kms-data-key` for the stack's kmsDataKey."""
    arn = boto3.client("kms").create_key(Description="clawbot prod")["KeyMetadata"]["Arn"]
    made = subprocess.run(
        [sys.executable, "-m", "app.keys", "kms-data-key", "--kms-key-id", arn],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


@pytest.fixture
def kms_prod(aws_env: dict[str, str]) -> Synthesis:
    return synthesize("prod", overrides={"kmsDataKey": kms_data_key(aws_env)})


def kms_open(s: Synthesis) -> Any:
    return open_key_file(secret_file(s, "clawbot-keys", "keys.json"), KmsUnsealer())


def kek_of(s: Synthesis) -> str:
    return secret_file(s, "clawbot-kek", "kek")


# -- KMS mode -----------------------------------------------------------------------------------------------------


def test_the_prod_key_file_opens_only_through_kms_and_holds_the_output_api_key(kms_prod: Synthesis) -> None:
    ring = kms_open(kms_prod)
    api_key = kms_prod.outputs["apiKey"]
    assert [k.id for k in ring.api_keys] == kms_prod.outputs["apiKeyIds"] and api_key in {
        k.secret for k in ring.api_keys
    }
    contents = contents_of(ring, source="keys.json", strict=True)  # what the service does at start
    primary = next(e for e in contents.api_keys if e.digest == digest(api_key))
    assert primary.expires_at is None and primary.scopes >= {"chat"}
    assert len(contents.jwt_keys) == 2 and ring.hub_token is None
    # No KEK exists: not as a Secret, not as a value the program generates; the file names the KMS key it needs.
    assert kms_prod.find("Secret", "clawbot-kek") == [] and not [
        r for r in kms_prod.resources if r.name == "secrets-kek"
    ]
    doc = json.loads(secret_file(kms_prod, "clawbot-keys", "keys.json"))
    assert doc["kms"]["key_id"] == json.loads(kms_prod.config["kmsDataKey"])["keyId"] and "kek_id" not in doc
    with pytest.raises(KeyFileError, match="sealed for the KMS key"):
        open_key_file(secret_file(kms_prod, "clawbot-keys", "keys.json"), "a-kek-from-somewhere-else-0123456789abcdef")


def test_an_unchanged_stack_seals_byte_identical_files(kms_prod: Synthesis) -> None:
    again = synthesize("prod", overrides={"kmsDataKey": kms_prod.config["kmsDataKey"]})
    assert secret_file(again, "clawbot-keys", "keys.json") == secret_file(kms_prod, "clawbot-keys", "keys.json")


def test_raw_keys_appear_only_as_secret_output(prod: Synthesis) -> None:
    assert prod.secret_outputs == {"apiKey"}
    key_file = secret_file(prod, "clawbot-keys", "keys.json")
    assert prod.outputs["apiKey"] not in key_file  # envelope-encrypted, not pasted
    assert json.loads(key_file)["format"] == "clawbot-keyring/1"


def test_kms_pods_run_as_their_own_account_with_the_iam_role_and_reach_kms_only(prod: Synthesis) -> None:
    pod, chat = pod_spec(prod), chat_container(prod)
    assert pod["serviceAccountName"] == "clawbot" and pod["automountServiceAccountToken"] is False
    assert "initContainers" not in pod and {v["name"] for v in pod["volumes"]} >= {"keys"}
    assert not any("kek" in v["name"] for v in pod["volumes"])
    account = prod.one("ServiceAccount", "clawbot").manifest
    assert account["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/clawbot-prod-chat"
    }
    assert account["automountServiceAccountToken"] is False
    config = prod.one("ConfigMap", "clawbot-config").manifest["data"]
    assert (
        config["KEY_ENCRYPTION"] == "kms"
        and "KEK_PATH" not in config
        and "keys" in {m["name"] for m in chat["volumeMounts"]}
    )
    # The chat pods' egress policy opens the KMS endpoint's CIDRs on 443 (test_firewall proves what that admits).
    egress = prod.one("NetworkPolicy", "clawbot-chat-egress").manifest["spec"]["egress"]
    assert {"to": [{"ipBlock": {"cidr": "10.0.96.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]} in egress
    assert prod.find("NetworkPolicy", "clawbot-key-egress") == []  # no policy of its own beside the firewall's
    # The operator makes the role from the output: Decrypt on the one key, for key files only.
    policy = prod.outputs["keyStore"]["policy"]["Statement"]
    assert policy == [
        {
            "Sid": "UnwrapTheKeyFilesDataKey",
            "Effect": "Allow",
            "Action": "kms:Decrypt",
            "Resource": prod.outputs["keyStore"]["kmsKeyArn"],
            "Condition": {
                "StringEquals": {"kms:EncryptionContext:app": "clawbot", "kms:EncryptionContext:purpose": "key-file"}
            },
        }
    ]
    assert prod.outputs["keyStore"]["serviceAccount"] == "system:serviceaccount:clawbot:clawbot"


def test_with_pod_identity_the_pods_may_reach_the_node_agent_too() -> None:
    s = synthesize("prod", overrides={"kmsRoleArn": ""})
    assert "annotations" not in s.one("ServiceAccount", "clawbot").manifest["metadata"]
    rules = s.one("NetworkPolicy", "clawbot-chat-egress").manifest["spec"]["egress"]
    assert {
        "to": [{"ipBlock": {"cidr": "169.254.170.23/32"}}, {"ipBlock": {"cidr": "fd00:ec2::23/128"}}],
        "ports": [{"protocol": "TCP", "port": 80}],
    } in rules


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"kmsDataKey": ""},
            "clawbot:keyEncryption kms needs clawbot:kmsDataKey: run `python -m app.keys kms-data-key",
        ),
        ({"kmsDataKey": "{}"}, "clawbot:kmsDataKey: a KMS data key names its KMS key by ARN"),
        (
            {"kmsDataKey": "not json"},
            "clawbot:kmsDataKey: a KMS data key must be the JSON `python -m app.keys kms-data-key` prints",
        ),
        ({"kmsRoleArn": "clawbot-role"}, "clawbot:kmsRoleArn must be an IAM role ARN"),
        ({"keyEncryption": "vault"}, "clawbot:keyEncryption must be one of kms, namespace, got 'vault'"),
        ({"clusterSecretsKeyArn": "alias/eks"}, "clawbot:clusterSecretsKeyArn must be a KMS key ARN"),
    ],
)
def test_bad_key_store_settings_are_refused_naming_the_key(changes: dict[str, Any], message: str) -> None:
    from infra.settings import ConfigError, parse_settings
    from infra.tools.synth import read_stack_config

    with pytest.raises(ConfigError) as err:
        parse_settings({**read_stack_config("prod"), **changes}, stack="prod")
    assert message in str(err.value)


# -- namespace mode (the weaker one) --------------------------------------------------------------------------------


def test_the_kek_lives_in_a_namespace_of_its_own_that_runs_no_pods(dev: Synthesis) -> None:
    (kek,) = dev.find("Secret", "clawbot-kek")
    assert kek.namespace == "clawbot-dev-kek" and dev.one("Secret", "clawbot-keys").namespace == "clawbot-dev"
    namespace = dev.one("Namespace", "clawbot-dev-kek").manifest["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"
    quota = dev.one("ResourceQuota", "no-pods")
    assert quota.namespace == "clawbot-dev-kek" and quota.manifest["spec"] == {"hard": {"pods": "0"}}
    role = dev.one("Role", "clawbot-kek-reader")
    assert role.namespace == "clawbot-dev-kek"
    assert role.manifest["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["clawbot-kek"], "verbs": ["get"]}
    ]
    binding = dev.one("RoleBinding", "clawbot-kek-reader").manifest
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "clawbot", "namespace": "clawbot-dev"}]
    # Nothing in the app's namespace holds or mounts it.
    assert all(o.namespace != "clawbot-dev" or kek_of(dev) not in json.dumps(o.manifest) for o in dev.objects)


def test_only_the_init_step_carries_a_token_and_the_chat_container_gets_only_the_data_key(dev: Synthesis) -> None:
    pod, chat = pod_spec(dev), chat_container(dev)
    (init,) = pod["initContainers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert pod["serviceAccountName"] == "clawbot" and pod["automountServiceAccountToken"] is False
    token_mounts = [m for m in init["volumeMounts"] if m["mountPath"] == SERVICE_ACCOUNT_DIR]
    assert [m["name"] for m in token_mounts] == ["kek-reader-token"]
    token = volumes["kek-reader-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["expirationSeconds"] <= 3600 and "audience" not in token  # for the API server, short-lived
    assert not any(m["name"] == "kek-reader-token" for m in chat["volumeMounts"])
    assert volumes["data-key"]["emptyDir"]["medium"] == "Memory"
    assert {m["name"]: m.get("readOnly", False) for m in chat["volumeMounts"]}["data-key"] is True
    assert init["image"] == chat["image"] and init["securityContext"]["readOnlyRootFilesystem"]
    config = dev.one("ConfigMap", "clawbot-config").manifest["data"]
    assert (config["KEY_ENCRYPTION"], config["DATA_KEY_PATH"]) == ("data-key-file", DATA_KEY_PATH)
    # The init step reaches the API server: its ports, at private addresses (kubernetesApiCidrs unset), nothing public.
    egress = dev.one("NetworkPolicy", "clawbot-chat-egress").manifest["spec"]["egress"]
    api = [r for r in egress if r["ports"][0]["port"] in (443, 6443)]
    assert [r["ports"] for r in api] == [[{"protocol": "TCP", "port": 443}], [{"protocol": "TCP", "port": 6443}]]
    assert all(
        [b["ipBlock"]["cidr"] for b in r["to"]] == ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"] for r in api
    )


def test_the_init_step_reads_the_kek_as_the_role_allows_and_the_service_opens_the_key_file(
    dev: Synthesis, tmp_path: Path
) -> None:
    role = dev.one("Role", "clawbot-kek-reader").manifest
    kek_secret = dev.one("Secret", "clawbot-kek")
    requests: list[tuple[str, str, str, str | None]] = []

    def handle(method: str, url: str, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        *_, namespace, resource, name = urlsplit(url).path.split("/")
        request = (method.lower(), "", resource, name)
        requests.append(request)
        if namespace != kek_secret.namespace or not allowed(role, *request):
            return 403, {"reason": "Forbidden"}
        data = {k: base64.b64encode(v.encode()).decode() for k, v in kek_secret.manifest["stringData"].items()}
        return 200, {"kind": "Secret", "data": data}

    (init,) = pod_spec(dev)["initContainers"]
    keys = tmp_path / "keys.json"
    keys.write_text(secret_file(dev, "clawbot-keys", "keys.json"))
    out = tmp_path / "data-key" / "dek"
    # The init container's args, with the pod's paths mapped to this test's files.
    args = [{API_KEY_PATH: str(keys), DATA_KEY_PATH: str(out)}.get(a, a) for a in init["args"]]
    assert args[:4] == ["python", "-m", "app.keys", "unseal-data-key"]
    with stand_in_api_server(handle, tmp_path, token="init-step-token", namespace="clawbot-dev") as env:
        done = subprocess.run(
            [sys.executable, *args[1:]],
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    assert requests == [("get", "", "secrets", "clawbot-kek")]
    assert kek_of(dev) not in out.read_text() and kek_of(dev) not in done.stdout + done.stderr
    ring = KeyRing(keys, strict=True, unsealer=DataKeyFile(out))  # what the chat container does with DATA_KEY_PATH
    assert ring.verify(dev.outputs["apiKey"])[1] == "active"


def test_an_init_step_refused_by_the_api_server_stops_the_pod(dev: Synthesis, tmp_path: Path) -> None:
    (init,) = pod_spec(dev)["initContainers"]
    keys = tmp_path / "keys.json"
    keys.write_text(secret_file(dev, "clawbot-keys", "keys.json"))
    args = [{API_KEY_PATH: str(keys), DATA_KEY_PATH: str(tmp_path / "dek")}.get(a, a) for a in init["args"]]
    with stand_in_api_server(
        lambda *_: (403, {"reason": "Forbidden"}), tmp_path, token="t", namespace="clawbot-dev"
    ) as env:
        done = subprocess.run(
            [sys.executable, *args[1:]],
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2 and "reading Secret clawbot-dev-kek/clawbot-kek answered 403" in done.stderr
    assert "needs `get` on it" in done.stderr and not (tmp_path / "dek").exists()


def test_hub_token_is_sealed_when_model_hub_auth_is_on() -> None:
    s = synthesize("dev", overrides={"modelHubAuth": True, "hubToken": "hf_sEcReTtOkEn1234567890"})
    ring = open_key_file(secret_file(s, "clawbot-keys", "keys.json"), kek_of(s))
    assert ring.hub_token == "hf_sEcReTtOkEn1234567890"
    assert "hf_sEcReTtOkEn1234567890" not in json.dumps([o.manifest for o in s.objects if o.kind != "Secret"])


# -- rotation -------------------------------------------------------------------------------------------------------


def test_rotation_replaces_one_slot_per_period_and_keeps_the_old_key_one_period() -> None:
    days = 90
    before = rotation_schedule(10 * days * DAY_S - 1, days)
    after = rotation_schedule(10 * days * DAY_S, days)
    assert after.epoch == before.epoch + 1
    assert after.secondary == before.primary  # yesterday's primary is still accepted
    assert after.primary.key_id not in {before.primary.key_id, before.secondary.key_id}
    assert after.period_end - after.primary.starts_at == days * DAY_S
    later = rotation_schedule(11 * days * DAY_S + 5, days)
    assert later.secondary == after.primary and later.primary.name == before.primary.name


def test_secondary_key_expires_at_the_end_of_the_period(kms_prod: Synthesis) -> None:
    ring = kms_open(kms_prod)
    primary, secondary = ring.api_keys
    assert primary.expires_at is None
    assert parse_time(secondary.expires_at, "expires_at") == pytest.approx(
        parse_time(primary.not_before, "not_before") + 90 * DAY_S  # type: ignore[operator]
    )
