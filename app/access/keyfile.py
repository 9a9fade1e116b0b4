"""The key-file format shared by `infra/` (which writes it) and `app/` (which reads it).

Envelope encryption, KMS style:

* The key-encryption key (KEK) lives in its own file/Secret (`KEK_PATH`): one line,
  any high-entropy string of at least 32 characters. The Fernet key is derived from it
  with HKDF-SHA256, so the KEK can come straight from `pulumi-random`.
* The key file (`API_KEY_PATH`) is JSON::

    {
      "format": "clawbot-keyring/1",
      "kek_id": "<first 16 hex of sha256(kek)>",   # which KEK wrapped the DEK
      "dek": "<Fernet(KEK) token of a fresh Fernet DEK>",
      "api_keys": [
        {"id": "primary", "scopes": ["chat", "admin"],
         "not_before": "2026-01-01T00:00:00Z", "expires_at": "2026-04-01T00:00:00Z" | null,
         "revoked": false, "ciphertext": "<Fernet(DEK) token of the raw API key>"}
      ],
      "jwt_keys": [
        {"kid": "jwt-1", "not_before": "...", "expires_at": null,
         "retired_at": "...",   # only once rotated out: it signs nothing after this, verifies until expires_at
         "ciphertext": "<Fernet(DEK) token of the HS256 signing secret>"}
      ],
      "hub_token": {"ciphertext": "..."} | null
    }

  Only the DEK is wrapped by the KEK: rotating the KEK re-wraps one value.
  `seal_key_file` accepts a fixed `dek` and `iv_seed` so that `pulumi preview` of an
  unchanged stack shows no diff (Fernet is otherwise randomized per call).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FORMAT = "clawbot-keyring/1"
API_KEY_PREFIX = "ck-"
MIN_KEK_LENGTH = 32
_FIXED_TIME = 1_700_000_000  # Fernet timestamps are unused (no TTL); a fixed one keeps output stable.


class KeyFileError(ValueError):
    """The key file or KEK is missing, malformed, or does not decrypt."""


def fernet_from_secret(secret: str, purpose: bytes) -> Fernet:
    if len(secret) < MIN_KEK_LENGTH:
        raise KeyFileError(f"key material must be at least {MIN_KEK_LENGTH} characters, got {len(secret)}")
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"clawbot", info=purpose).derive(secret.encode())
    return Fernet(base64.urlsafe_b64encode(raw))


def kek_id(kek: str) -> str:
    return hashlib.sha256(kek.encode()).hexdigest()[:16]


def _encrypt(f: Fernet, plaintext: str, iv_seed: bytes | None) -> str:
    if iv_seed is None:
        return f.encrypt_at_time(plaintext.encode(), _FIXED_TIME).decode()
    # Deterministic IV (HMAC of the plaintext under the seed): same inputs, same token.
    iv = hmac.new(iv_seed, plaintext.encode(), hashlib.sha256).digest()[:16]
    return f._encrypt_from_parts(plaintext.encode(), _FIXED_TIME, iv).decode()  # noqa: SLF001


def _decrypt(f: Fernet, token: str, what: str) -> str:
    try:
        return f.decrypt(token.encode()).decode()
    except (InvalidToken, ValueError, AttributeError) as exc:
        raise KeyFileError(f"{what} does not decrypt with this key") from exc


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    secret: str
    scopes: tuple[str, ...] = ("chat",)
    not_before: str | None = None
    expires_at: str | None = None
    revoked: bool = False


@dataclass(frozen=True)
class JwtKeyRecord:
    kid: str
    secret: str
    not_before: str | None = None
    expires_at: str | None = None
    retired_at: str | None = None


@dataclass(frozen=True)
class KeyFile:
    """The decrypted contents of a key file (the live, hashed view the service verifies against is access.keyring.KeyRing)."""

    api_keys: tuple[ApiKeyRecord, ...] = ()
    jwt_keys: tuple[JwtKeyRecord, ...] = ()
    hub_token: str | None = None


def seal_key_file(keyring: KeyFile, kek: str, *, dek: str | None = None, iv_seed: bytes | None = None) -> str:
    """Serialize `keyring` as the JSON key file, encrypting every secret."""
    wrap = fernet_from_secret(kek, b"kek")
    dek = dek or Fernet.generate_key().decode()
    data_key = Fernet(dek.encode())
    doc: dict[str, Any] = {
        "format": FORMAT,
        "kek_id": kek_id(kek),
        "dek": _encrypt(wrap, dek, iv_seed),
        "api_keys": [
            {
                "id": k.id,
                "scopes": list(k.scopes),
                "not_before": k.not_before,
                "expires_at": k.expires_at,
                "revoked": k.revoked,
                "ciphertext": _encrypt(data_key, k.secret, iv_seed),
            }
            for k in keyring.api_keys
        ],
        "jwt_keys": [
            {
                "kid": k.kid,
                "not_before": k.not_before,
                "expires_at": k.expires_at,
                # Written only once set, so files sealed before rotation kept the field are unchanged byte for byte.
                **({"retired_at": k.retired_at} if k.retired_at else {}),
                "ciphertext": _encrypt(data_key, k.secret, iv_seed),
            }
            for k in keyring.jwt_keys
        ],
        "hub_token": None if keyring.hub_token is None else {"ciphertext": _encrypt(data_key, keyring.hub_token, iv_seed)},
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def open_key_file(text: str, kek: str) -> KeyFile:
    """Parse and decrypt a key file. Raises KeyFileError naming what is wrong."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyFileError(f"key file is not JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise KeyFileError(f"key file format must be {FORMAT!r}, got {doc.get('format') if isinstance(doc, dict) else type(doc).__name__!r}")
    if doc.get("kek_id") and doc["kek_id"] != kek_id(kek):
        raise KeyFileError(f"key file was sealed under KEK {doc['kek_id']}, but the KEK given is {kek_id(kek)}")
    data_key = Fernet(_decrypt(fernet_from_secret(kek, b"kek"), str(doc.get("dek", "")), "the data key").encode())
    try:
        api = tuple(
            ApiKeyRecord(
                id=str(k["id"]),
                secret=_decrypt(data_key, k["ciphertext"], f"API key {k['id']!r}"),
                scopes=tuple(k.get("scopes") or ("chat",)),
                not_before=k.get("not_before"),
                expires_at=k.get("expires_at"),
                revoked=bool(k.get("revoked", False)),
            )
            for k in doc.get("api_keys", [])
        )
        jwt = tuple(
            JwtKeyRecord(
                kid=str(k["kid"]),
                secret=_decrypt(data_key, k["ciphertext"], f"JWT key {k['kid']!r}"),
                not_before=k.get("not_before"),
                expires_at=k.get("expires_at"),
                retired_at=k.get("retired_at"),
            )
            for k in doc.get("jwt_keys", [])
        )
    except (KeyError, TypeError) as exc:
        raise KeyFileError(f"key file entry is missing a field: {exc}") from exc
    hub = doc.get("hub_token")
    return KeyFile(
        api_keys=api,
        jwt_keys=jwt,
        hub_token=_decrypt(data_key, hub["ciphertext"], "hub token") if hub else None,
    )


def iso_time(epoch: float) -> str:
    """Epoch seconds as the key file writes times: `2026-01-01T00:00:00Z`."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def now_iso(offset_s: float = 0) -> str:
    return iso_time(time.time() + offset_s)


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def new_secret() -> str:
    """A KEK or JWT signing secret: 64 URL-safe characters."""
    return secrets.token_urlsafe(48)
