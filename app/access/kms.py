"""AWS KMS for the key file: the service's one call (Decrypt, once, at start) and the key CLI's (GenerateDataKey).

The key-encryption key never leaves KMS. KMS wraps an X25519 private key (a KMS data key, app.access.keyfile); the
service asks KMS to unwrap it, keeps the unwrapped key in memory only, and opens with it every key file sealed to its
public half. A key file rewritten with the same KMS data key (a rotation) opens without calling KMS again.

boto3 finds credentials and the endpoint as it always does: on EKS, IRSA (AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE)
or Pod Identity (AWS_CONTAINER_CREDENTIALS_FULL_URI); AWS_ENDPOINT_URL_KMS sends the calls elsewhere (a VPC endpoint
with private DNS needs nothing; the tests point it at a local KMS). The region is the KMS key's, from its ARN.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from app.access.keyfile import (
    KMS_ENCRYPTION_CONTEXT,
    KeyFileError,
    KeySourceError,
    KmsDataKey,
    PrivateKeyUnsealer,
    kms_data_key_of,
    public_key_of,
)

log = logging.getLogger("clawbot.keys")

CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 10
MAX_ATTEMPTS = 5


class KmsError(KeySourceError):
    """KMS refused or could not be reached; the message names the key, the call and what to check."""


def _client(region: str | None) -> Any:
    # Imported here: only KMS mode and the CLI's KMS commands pay for loading boto3.
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
    )
    # A session of its own: credentials are looked up now (a pod's web-identity token may have been renewed).
    return boto3.session.Session().client("kms", region_name=region, config=config)


def _call(operation: str, key_id: str, region: str | None, **params: Any) -> Mapping[str, Any]:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

    try:
        return getattr(_client(region), operation)(KeyId=key_id, EncryptionContext=KMS_ENCRYPTION_CONTEXT, **params)  # type: ignore[no-any-return]
    except NoCredentialsError:
        raise KmsError(
            f"KMS {operation} for {key_id}: no AWS credentials; on EKS give the pod's ServiceAccount an IAM role "
            "(IRSA annotation eks.amazonaws.com/role-arn, or a Pod Identity association)"
        ) from None
    except NoRegionError:
        raise KmsError(f"KMS {operation} for {key_id}: no region; name the key by ARN or set AWS_REGION") from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "error"), error.get("Message", "")
        hint = (
            (
                f"; the role needs kms:{'Decrypt' if operation == 'decrypt' else 'GenerateDataKey'} on this key with the "
                f"encryption context {KMS_ENCRYPTION_CONTEXT}"
            )
            if code == "AccessDeniedException"
            else ""
        )
        raise KmsError(f"KMS {operation} for {key_id} answered {code}: {message}{hint}") from None
    except BotoCoreError as exc:
        raise KmsError(f"KMS {operation} for {key_id} failed: {exc}") from None


def region_of(key_id: str) -> str | None:
    """The region in a KMS key ARN; None for a key id or alias (boto3's configured region applies)."""
    parts = key_id.split(":")
    return parts[3] if key_id.startswith("arn:") and len(parts) > 4 and parts[3] else None


def generate_kms_data_key(key_id: str) -> tuple[KmsDataKey, X25519PrivateKey]:
    """A new KMS data key: KMS makes 32 random bytes (the X25519 private key) and returns them wrapped and in plain."""
    answer = _call("generate_data_key", key_id, region_of(key_id), KeySpec="AES_256")
    private = X25519PrivateKey.from_private_bytes(bytes(answer["Plaintext"]))
    wrapped = KmsDataKey.from_fields(
        answer["KeyId"], base64.b64encode(bytes(answer["CiphertextBlob"])).decode(), public_key_of(private)
    )
    return wrapped, private


def unwrap_kms_data_key(data_key: KmsDataKey) -> X25519PrivateKey:
    """Ask KMS to unwrap `data_key`; refuses a key whose public half is not the one recorded with it."""
    answer = _call("decrypt", data_key.key_id, data_key.region, CiphertextBlob=base64.b64decode(data_key.wrapped_key))
    try:
        private = X25519PrivateKey.from_private_bytes(bytes(answer["Plaintext"]))
    except ValueError:
        raise KmsError(
            f"KMS unwrapped {data_key.key_id}'s data key to {len(answer['Plaintext'])} bytes, not a 32-byte X25519 key"
        ) from None
    if public_key_of(private) != data_key.public_key:
        raise KmsError(
            f"the KMS data key unwrapped with {data_key.key_id} does not match its recorded public key: the "
            "wrapped key and the public key come from different `kms-data-key` runs"
        )
    return private


class KmsUnsealer:
    """Opens KMS-sealed key files: unwraps their KMS data key through KMS once and keeps only the unwrapped key."""

    def __init__(self, unwrap: Callable[[KmsDataKey], X25519PrivateKey] = unwrap_kms_data_key) -> None:
        self._unwrap = unwrap
        self._held: tuple[KmsDataKey, PrivateKeyUnsealer] | None = None

    def data_key(self, doc: Mapping[str, Any]) -> str:
        wanted = kms_data_key_of(doc)
        if wanted is None:
            raise KeyFileError(
                "key file is sealed under a KEK, not for KMS; KEY_ENCRYPTION=kms opens only KMS-sealed files"
            )
        if self._held is None or self._held[0] != wanted:
            self._held = (wanted, PrivateKeyUnsealer(self._unwrap(wanted)))
            log.info("KMS unwrapped the key file's data key", extra={"kms_key": wanted.key_id})
        return self._held[1].data_key(doc)
