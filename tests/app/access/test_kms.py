"""KMS mode: the key file's data key opens only through AWS KMS, here a real local KMS (moto's server, tests/aws_server.py).

The key CLI asks KMS for a data key and seals a key file for it; the service unwraps it through KMS Decrypt once and
holds only the unwrapped key; no KEK exists anywhere on disk. The sealing is RFC 9180 HPKE, checked against the RFC's
test vector and opened by the cryptography library's own HPKE.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from app.access import keyfile
from app.access.key_material import KeyMaterialError, production_key_ring
from app.access.keyfile import (
    ApiKeyRecord,
    JwtKeyRecord,
    KeyFile,
    KeyFileError,
    KmsDataKey,
    hpke_open,
    hpke_seal,
    new_api_key,
    new_secret,
    now_iso,
    open_key_file,
    public_key_of,
    seal_key_file,
)
from app.access.keyring import DataKeyFile, KeyRing
from app.access.kms import KmsError, KmsUnsealer, generate_kms_data_key, unwrap_kms_data_key
from app.settings import Settings, SettingsError, load_settings
from tests.aws_server import aws_env, aws_server  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[3]


def kms_key() -> str:
    return str(boto3.client("kms").create_key(Description="clawbot key file")["KeyMetadata"]["Arn"])


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.keys", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def ring_file() -> KeyFile:
    return KeyFile(
        api_keys=(ApiKeyRecord(id="ops", secret=new_api_key(), scopes=("chat",), not_before=now_iso(-60)),),
        jwt_keys=(JwtKeyRecord(kid="jwt-1", secret=new_secret(), not_before=now_iso(-60)),),
    )


# -- the sealing ------------------------------------------------------------------------------------------------------


def test_the_deterministic_ephemeral_key_is_rfc_9180s_derive_key_pair() -> None:
    # RFC 9180 A.1.1 (DHKEM(X25519, HKDF-SHA256)): ikmE and the skEm/pkEm it derives.
    kem = b"KEM" + (0x20).to_bytes(2, "big")
    ikm = bytes.fromhex("7268600d403fce431561aef583ee1613527cff655c1343f29812e66706df3234")
    sk = keyfile._labeled_expand(kem, keyfile._labeled_extract(kem, b"", b"dkp_prk", ikm), b"sk", b"", 32)
    assert sk.hex() == "52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736"
    pk = X25519PrivateKey.from_private_bytes(sk).public_key().public_bytes_raw()
    assert pk.hex() == "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431"


def test_a_sealed_data_key_opens_with_the_librarys_hpke_and_only_with_its_private_key() -> None:
    private = X25519PrivateKey.generate()
    public = public_key_of(private)
    fixed = hpke_seal(public, b"the data key", ikm=b"\x01" * 32)
    assert fixed == hpke_seal(public, b"the data key", ikm=b"\x01" * 32)  # same inputs, same bytes: no diff on `up`
    assert fixed != hpke_seal(public, b"the data key", ikm=b"\x02" * 32)
    for token in (fixed, hpke_seal(public, b"the data key")):
        assert hpke_open(private, token, "x") == b"the data key"
        with pytest.raises(KeyFileError, match="does not open"):
            hpke_open(X25519PrivateKey.generate(), token, "x")
    raw = bytearray(base64.urlsafe_b64decode(fixed.removeprefix("hpke.")))
    raw[-1] ^= 1
    with pytest.raises(KeyFileError, match="does not open"):
        hpke_open(private, "hpke." + base64.urlsafe_b64encode(bytes(raw)).decode(), "x")


# -- KMS, for real ------------------------------------------------------------------------------------------------


def test_the_cli_makes_a_kms_data_key_and_a_key_file_the_service_opens_through_kms(
    aws_env: dict[str, str], tmp_path: Path
) -> None:
    arn = kms_key()
    made = cli(aws_env, "kms-data-key", "--kms-key-id", arn)
    assert made.returncode == 0, made.stderr
    data_key = KmsDataKey.from_json(made.stdout)
    assert data_key.key_id == arn and "pulumi config set kmsDataKey" in made.stderr
    keys = tmp_path / "keys.json"
    added = cli(
        {**aws_env, "KEK_PATH": ""}, "add", "--id", "ops", "--key-file", str(keys), "--kms-data-key", made.stdout
    )
    assert added.returncode == 0, added.stderr
    raw = added.stdout.strip()
    doc = json.loads(keys.read_text())
    assert doc["kms"] == data_key.as_dict() and "kek_id" not in doc and doc["dek"].startswith("hpke.")
    assert list(tmp_path.iterdir()) == [keys]  # no KEK was written anywhere
    # Later commands open the file through KMS; no KEK is asked for.
    rotated = cli({**aws_env, "KEK_PATH": ""}, "rotate", "--jwt", "--key-file", str(keys))
    assert rotated.returncode == 0, rotated.stderr
    listed = cli({**aws_env, "KEK_PATH": ""}, "list", "--json", "--key-file", str(keys))
    assert [k["id"] for k in json.loads(listed.stdout)["api_keys"]] == ["ops"]

    settings = load_settings({"APP_ENV": "production", "API_KEY_PATH": str(keys), "KEY_ENCRYPTION": "kms"})
    assert settings.key_encryption == "kms" and settings.kek_path is None
    ring = production_key_ring(settings)
    assert ring.verify(raw)[1] == "active" and len(ring._contents.jwt_keys) == 2


def test_the_service_asks_kms_once_and_holds_only_the_unwrapped_key(aws_env: dict[str, str], tmp_path: Path) -> None:
    data_key, _ = generate_kms_data_key(kms_key())
    calls: list[KmsDataKey] = []

    def counting(wrapped: KmsDataKey) -> X25519PrivateKey:
        calls.append(wrapped)
        return unwrap_kms_data_key(wrapped)

    keys = tmp_path / "keys.json"
    ring_v1 = ring_file()
    keys.write_text(seal_key_file(ring_v1, data_key))
    ring = KeyRing(keys, strict=True, unsealer=KmsUnsealer(counting))
    # A rotation re-seals the file (a new DEK, new keys) for the same KMS data key: it opens with the key held.
    ring_v2 = KeyFile(
        api_keys=(*ring_v1.api_keys, ApiKeyRecord(id="new", secret=new_api_key(), not_before=now_iso(-60))),
        jwt_keys=ring_v1.jwt_keys,
    )
    keys.write_text(seal_key_file(ring_v2, data_key))
    assert ring.reload() and ring.verify(ring_v2.api_keys[1].secret)[1] == "active"
    assert calls == [data_key]  # one Decrypt, at start
    # A file sealed for another KMS data key (a new `kms-data-key`) is unwrapped anew.
    replacement, _ = generate_kms_data_key(data_key.key_id)
    keys.write_text(seal_key_file(ring_v2, replacement))
    assert ring.reload() and calls == [data_key, replacement]


def test_kms_refusals_stop_the_service_and_name_the_key(aws_env: dict[str, str], tmp_path: Path) -> None:
    arn = kms_key()
    data_key, _ = generate_kms_data_key(arn)
    keys = tmp_path / "keys.json"
    settings = Settings(app_env="production", api_key_path=keys, key_encryption="kms")
    keys.write_text(seal_key_file(ring_file(), data_key))
    assert production_key_ring(settings).verify("ck-nope")[1] == "unknown_key"
    # A key the account does not hold (another account or region, or deleted): KMS answers, the service stops.
    gone = arn.rsplit("/", 1)[0] + "/00000000-0000-4000-8000-000000000000"
    keys.write_text(seal_key_file(ring_file(), KmsDataKey(gone, data_key.wrapped_key, data_key.public_key)))
    with pytest.raises(KeyMaterialError, match=rf"KMS decrypt for {gone} answered NotFoundException"):
        production_key_ring(settings)
    # A blob KMS wrapped for another purpose (another encryption context) does not unwrap as a key file's data key.
    other = boto3.client("kms").generate_data_key(KeyId=arn, KeySpec="AES_256", EncryptionContext={"app": "else"})
    forged = KmsDataKey(
        arn,
        base64.b64encode(other["CiphertextBlob"]).decode(),
        public_key_of(X25519PrivateKey.from_private_bytes(other["Plaintext"])),
    )
    keys.write_text(seal_key_file(ring_file(), forged))
    with pytest.raises(KeyMaterialError, match="InvalidCiphertextException"):
        production_key_ring(settings)


def test_a_wrapped_key_and_a_public_key_from_different_runs_are_refused(aws_env: dict[str, str]) -> None:
    arn = kms_key()
    first, _ = generate_kms_data_key(arn)
    second, _ = generate_kms_data_key(arn)
    with pytest.raises(KmsError, match="does not match its recorded public key"):
        unwrap_kms_data_key(KmsDataKey(arn, first.wrapped_key, second.public_key))


def test_without_credentials_the_error_says_what_the_pod_needs(
    aws_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_key, _ = generate_kms_data_key(kms_key())
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(KmsError, match="no AWS credentials.*eks.amazonaws.com/role-arn"):
        unwrap_kms_data_key(data_key)


# -- what opens what ----------------------------------------------------------------------------------------------


def test_each_mode_opens_only_files_sealed_for_it(tmp_path: Path) -> None:
    private = X25519PrivateKey.generate()
    data_key = KmsDataKey(
        "arn:aws:kms:us-east-1:123456789012:key/x", base64.b64encode(b"wrapped").decode(), public_key_of(private)
    )
    kms_file = seal_key_file(ring_file(), data_key)
    kek = new_secret()
    with pytest.raises(
        KeyFileError, match="sealed for the KMS key arn:aws:kms:us-east-1:123456789012:key/x, not a KEK"
    ):
        open_key_file(kms_file, kek)
    with pytest.raises(KeyFileError, match="sealed under a KEK, not for KMS"):
        open_key_file(seal_key_file(ring_file(), kek), KmsUnsealer(lambda _: private))
    other = KmsDataKey(data_key.key_id, data_key.wrapped_key, public_key_of(X25519PrivateKey.generate()))
    with pytest.raises(KeyFileError, match="sealed to public key"):
        open_key_file(seal_key_file(ring_file(), other), KmsUnsealer(lambda _: private))


def test_the_init_step_leaves_the_data_key_and_the_service_opens_the_file_with_it(tmp_path: Path) -> None:
    kek, ring = new_secret(), ring_file()
    keys, kek_file, out = tmp_path / "keys.json", tmp_path / "kek", tmp_path / "run" / "dek"
    keys.write_text(seal_key_file(ring, kek))
    kek_file.write_text(kek)
    done = cli({}, "unseal-data-key", "--key-file", str(keys), "--kek-file", str(kek_file), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert out.stat().st_mode & 0o777 == 0o600 and kek not in out.read_text()
    settings = load_settings(
        {
            "APP_ENV": "production",
            "API_KEY_PATH": str(keys),
            "KEY_ENCRYPTION": "data-key-file",
            "DATA_KEY_PATH": str(out),
        }
    )
    assert production_key_ring(settings).verify(ring.api_keys[0].secret)[1] == "active"
    out.write_text("not a data key")
    with pytest.raises(KeyFileError, match=r"DATA_KEY_PATH '.*dek': the data key must be a Fernet key"):
        KeyRing(keys, strict=True, unsealer=DataKeyFile(out))


@pytest.mark.parametrize(
    "env, message",
    [
        (
            {"KEY_ENCRYPTION": "kms"},
            "API_KEY_PATH must be set in production (APP_ENV=production) with KEY_ENCRYPTION=kms",
        ),
        ({"KEY_ENCRYPTION": "data-key-file", "API_KEY_PATH": "/k"}, "DATA_KEY_PATH must be set in production"),
        (
            {"KEY_ENCRYPTION": "vault", "API_KEY_PATH": "/k"},
            "KEY_ENCRYPTION must be one of kek-file, kms, data-key-file",
        ),
        ({"API_KEY_PATH": "/k"}, "KEK_PATH must be set in production (APP_ENV=production);"),
    ],
)
def test_settings_name_what_each_mode_needs(env: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({"APP_ENV": "production", **env})
    assert message in str(err.value)
