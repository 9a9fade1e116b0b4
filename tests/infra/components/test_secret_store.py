"""The secret store: the key file it writes opens with app/'s key ring and holds the API key the stack hands out."""
from __future__ import annotations

import json

import pytest

from app.access.keyfile import KeyFileError, open_key_file
from app.access.keyring import contents_of, digest, parse_time
from infra.components.secret_store import DAY_S, rotation_schedule
from infra.tools.synth import Synthesis, synthesize


def secret_file(s: Synthesis, secret: str, key: str) -> str:
    return s.one("Secret", secret).manifest["stringData"][key]


def test_key_file_decrypts_with_the_kek_and_holds_the_output_api_key(prod: Synthesis) -> None:
    kek = secret_file(prod, "clawbot-kek", "kek")
    ring = open_key_file(secret_file(prod, "clawbot-keys", "keys.json"), kek)
    api_key = prod.outputs["apiKey"]
    assert api_key in {k.secret for k in ring.api_keys}
    assert [k.id for k in ring.api_keys] == prod.outputs["apiKeyIds"]
    contents = contents_of(ring, source="keys.json", strict=True)  # what the service does at start
    primary = next(e for e in contents.api_keys if e.digest == digest(api_key))
    assert primary.expires_at is None and primary.scopes >= {"chat"}
    assert len(contents.jwt_keys) == 2 and ring.hub_token is None


def test_the_key_file_refuses_another_kek(prod: Synthesis) -> None:
    with pytest.raises(KeyFileError, match="sealed under KEK"):
        open_key_file(secret_file(prod, "clawbot-keys", "keys.json"), "another-key-encryption-key-of-48-characters-xyz")


def test_raw_keys_appear_only_as_secret_output(prod: Synthesis) -> None:
    assert prod.secret_outputs == {"apiKey"}
    key_file = secret_file(prod, "clawbot-keys", "keys.json")
    assert prod.outputs["apiKey"] not in key_file  # envelope-encrypted, not pasted
    assert secret_file(prod, "clawbot-kek", "kek") not in key_file
    assert json.loads(key_file)["format"] == "clawbot-keyring/1"


def test_an_unchanged_stack_seals_byte_identical_files(prod: Synthesis) -> None:
    again = synthesize("prod")
    assert secret_file(again, "clawbot-keys", "keys.json") == secret_file(prod, "clawbot-keys", "keys.json")


def test_secrets_are_mounted_read_only_at_the_paths_the_app_reads(prod: Synthesis) -> None:
    pod = prod.one("Deployment", "clawbot").manifest["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert volumes["kek"]["secret"]["secretName"] == "clawbot-kek" and mounts["kek"]["mountPath"] == "/var/run/clawbot/kek"
    assert volumes["keys"]["secret"]["secretName"] == "clawbot-keys" and mounts["keys"]["mountPath"] == "/var/run/clawbot/keys"
    assert mounts["kek"]["readOnly"] and mounts["keys"]["readOnly"] and "subPath" not in mounts["keys"]


def test_hub_token_is_sealed_when_model_hub_auth_is_on() -> None:
    s = synthesize("prod", overrides={"modelHubAuth": True, "hubToken": "hf_sEcReTtOkEn1234567890"})
    ring = open_key_file(secret_file(s, "clawbot-keys", "keys.json"), secret_file(s, "clawbot-kek", "kek"))
    assert ring.hub_token == "hf_sEcReTtOkEn1234567890"
    assert "hf_sEcReTtOkEn1234567890" not in json.dumps([o.manifest for o in s.objects if o.kind != "Secret"])


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


def test_secondary_key_expires_at_the_end_of_the_period(prod: Synthesis) -> None:
    ring = open_key_file(secret_file(prod, "clawbot-keys", "keys.json"), secret_file(prod, "clawbot-kek", "kek"))
    primary, secondary = ring.api_keys
    assert primary.expires_at is None
    assert parse_time(secondary.expires_at, "expires_at") == pytest.approx(
        parse_time(primary.not_before, "not_before") + 90 * DAY_S  # type: ignore[operator]
    )
