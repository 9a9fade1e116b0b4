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

KMS mode: no KEK exists outside AWS KMS. An X25519 key pair is made by KMS GenerateDataKey
(`python -m app.keys kms-data-key`); its private half is kept only wrapped by the KMS key
(`wrapped_key`), its public half is what the DEK is sealed to, with HPKE (RFC 9180, base mode,
DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM), so whoever seals a key file (the Pulumi
program, the key CLI) needs neither KMS nor any secret of the service. The file then carries
`"kms": {"key_id", "wrapped_key", "public_key"}` instead of `kek_id`, and `dek` is
`hpke.<base64url of enc || ciphertext>`. The service asks KMS to unwrap the private key once and
holds only that (app.access.kms).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

FORMAT = "clawbot-keyring/1"
API_KEY_PREFIX = "ck-"
MIN_KEK_LENGTH = 32
_FIXED_TIME = 1_700_000_000  # Fernet timestamps are unused (no TTL); a fixed one keeps output stable.


class KeyFileError(ValueError):
    """The key file or KEK is missing, malformed, or does not decrypt."""


class KeySourceError(KeyFileError):
    """What opens the key file (the KEK file, the data-key file, KMS) is missing, malformed or refused."""


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
    return f._encrypt_from_parts(plaintext.encode(), _FIXED_TIME, iv).decode()


def _decrypt(f: Fernet, token: str, what: str) -> str:
    try:
        return f.decrypt(token.encode()).decode()
    except (InvalidToken, ValueError, AttributeError) as exc:
        raise KeyFileError(f"{what} does not decrypt with this key") from exc


# -- KMS mode: the DEK sealed to a public key whose private half only KMS unwraps -------------------------------------

# Bound to every KMS call on the wrapped key (GenerateDataKey, Decrypt): a key policy can require it, and a blob
# wrapped for another purpose does not decrypt here.
KMS_ENCRYPTION_CONTEXT = {"app": "clawbot", "purpose": "key-file"}
HPKE_PREFIX = "hpke."
_HPKE_INFO = b"clawbot-keyring/1 data key"
_HPKE_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
# RFC 9180 identifiers of that suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
_KEM_ID, _KDF_ID, _AEAD_ID = 0x0020, 0x0001, 0x0002


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(value: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (ValueError, TypeError):
        raise KeyFileError(f"{what} is not base64") from None


@dataclass(frozen=True)
class KmsDataKey:
    """An X25519 key pair whose private half exists only wrapped by a KMS key (and, unwrapped, in the service).

    `python -m app.keys kms-data-key` makes one and prints it as JSON; the stack config (`kmsDataKey`) and every key
    file sealed for it carry it. Nothing in it is secret: the wrapped key opens only through KMS Decrypt.
    """

    key_id: str  # the ARN of the KMS key that wrapped it
    wrapped_key: str  # base64 CiphertextBlob of the 32-byte private key
    public_key: str  # base64 raw X25519 public key: what the key file's DEK is sealed to

    def as_dict(self) -> dict[str, str]:
        return {"key_id": self.key_id, "wrapped_key": self.wrapped_key, "public_key": self.public_key}

    def to_json(self) -> str:
        return json.dumps(
            {"keyId": self.key_id, "wrappedKey": self.wrapped_key, "publicKey": self.public_key}, sort_keys=True
        )

    @classmethod
    def from_json(cls, text: str) -> KmsDataKey:
        """What `kms-data-key` printed; raises KeyFileError naming what is missing or malformed."""
        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, TypeError):
            raise KeyFileError("a KMS data key must be the JSON `python -m app.keys kms-data-key` prints") from None
        if not isinstance(doc, dict):
            raise KeyFileError("a KMS data key must be a JSON object with keyId, wrappedKey and publicKey")
        return cls.from_fields(doc.get("keyId"), doc.get("wrappedKey"), doc.get("publicKey"))

    @classmethod
    def from_fields(cls, key_id: Any, wrapped_key: Any, public_key: Any) -> KmsDataKey:
        if not isinstance(key_id, str) or not key_id.startswith("arn:") or ":kms:" not in key_id:
            raise KeyFileError(
                f"a KMS data key names its KMS key by ARN (arn:aws:kms:REGION:ACCOUNT:key/ID), got {key_id!r}"
            )
        if not _unb64(wrapped_key, "the wrapped key"):
            raise KeyFileError("the wrapped key is empty")
        if len(_unb64(public_key, "the public key")) != 32:
            raise KeyFileError("the public key must be 32 bytes (a raw X25519 public key)")
        return cls(key_id=key_id, wrapped_key=str(wrapped_key), public_key=str(public_key))

    @property
    def region(self) -> str:
        return self.key_id.split(":")[3]


def public_key_of(private: X25519PrivateKey) -> str:
    return _b64(private.public_key().public_bytes_raw())


def _i2osp(n: int, length: int) -> bytes:
    return n.to_bytes(length, "big")


def _labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, b"HPKE-v1" + suite_id + label + ikm, hashlib.sha256).digest()  # HKDF-Extract


def _labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    labeled = _i2osp(length, 2) + b"HPKE-v1" + suite_id + label + info
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=labeled).derive(prk)


def hpke_seal(public_key: str, plaintext: bytes, *, ikm: bytes | None = None) -> str:
    """HPKE base-mode Seal of `plaintext` to `public_key` (base64 raw X25519), as `hpke.<base64url(enc || ct)>`.

    With `ikm`, the ephemeral key is RFC 9180's DeriveKeyPair(ikm), so equal inputs seal to equal bytes (an unchanged
    stack must seal an unchanged file); without, the library seals with a fresh ephemeral key. Either opens with the
    library's HPKE (hpke_open).
    """
    recipient = X25519PublicKey.from_public_bytes(_unb64(public_key, "the public key"))
    if ikm is None:
        sealed = _HPKE_SUITE.encrypt(plaintext, recipient, info=_HPKE_INFO)
        return HPKE_PREFIX + base64.urlsafe_b64encode(sealed).decode()
    kem_suite = b"KEM" + _i2osp(_KEM_ID, 2)
    suite = b"HPKE" + _i2osp(_KEM_ID, 2) + _i2osp(_KDF_ID, 2) + _i2osp(_AEAD_ID, 2)
    # DeriveKeyPair(ikm) for X25519 (RFC 9180 7.1.3), then Encap with that ephemeral key (4.1).
    dkp_prk = _labeled_extract(kem_suite, b"", b"dkp_prk", ikm)
    ephemeral = X25519PrivateKey.from_private_bytes(_labeled_expand(kem_suite, dkp_prk, b"sk", b"", 32))
    enc = ephemeral.public_key().public_bytes_raw()
    eae_prk = _labeled_extract(kem_suite, b"", b"eae_prk", ephemeral.exchange(recipient))
    shared = _labeled_expand(kem_suite, eae_prk, b"shared_secret", enc + recipient.public_bytes_raw(), 32)
    # KeySchedule in mode_base (5.1): no PSK.
    context = (
        b"\x00"
        + _labeled_extract(suite, b"", b"psk_id_hash", b"")
        + _labeled_extract(suite, b"", b"info_hash", _HPKE_INFO)
    )
    secret = _labeled_extract(suite, shared, b"secret", b"")
    key = _labeled_expand(suite, secret, b"key", context, 32)
    nonce = _labeled_expand(suite, secret, b"base_nonce", context, 12)
    return HPKE_PREFIX + base64.urlsafe_b64encode(enc + AESGCM(key).encrypt(nonce, plaintext, b"")).decode()


def hpke_open(private: X25519PrivateKey, token: str, what: str) -> bytes:
    if not token.startswith(HPKE_PREFIX):
        raise KeyFileError(f"{what} is not sealed to a public key (no {HPKE_PREFIX!r} prefix)")
    try:
        return _HPKE_SUITE.decrypt(base64.urlsafe_b64decode(token[len(HPKE_PREFIX) :]), private, info=_HPKE_INFO)
    except (InvalidTag, ValueError) as exc:
        raise KeyFileError(f"{what} does not open with the unwrapped KMS data key") from exc


# -- what opens a key file's data key --------------------------------------------------------------------------------


class Unsealer(Protocol):
    """Whatever turns a key file's `dek` field into the Fernet data key: a KEK, an unwrapped KMS key, or the data key
    itself (an init step unwrapped it)."""

    def data_key(self, doc: Mapping[str, Any]) -> str: ...


def kms_data_key_of(doc: Mapping[str, Any]) -> KmsDataKey | None:
    """The KMS data key a key file is sealed for, or None for a file sealed under a KEK."""
    kms = doc.get("kms")
    if kms is None:
        return None
    if not isinstance(kms, dict):
        raise KeyFileError("key file's kms field must be an object with key_id, wrapped_key and public_key")
    return KmsDataKey.from_fields(kms.get("key_id"), kms.get("wrapped_key"), kms.get("public_key"))


@dataclass(frozen=True)
class KekUnsealer:
    """The DEK wrapped by a KEK (Fernet, HKDF of the KEK)."""

    kek: str

    def data_key(self, doc: Mapping[str, Any]) -> str:
        kms = kms_data_key_of(doc)
        if kms is not None:
            raise KeyFileError(
                f"key file is sealed for the KMS key {kms.key_id}, not a KEK; it opens with KEY_ENCRYPTION=kms"
            )
        if doc.get("kek_id") and doc["kek_id"] != kek_id(self.kek):
            raise KeyFileError(
                f"key file was sealed under KEK {doc['kek_id']}, but the KEK given is {kek_id(self.kek)}"
            )
        return _decrypt(fernet_from_secret(self.kek, b"kek"), str(doc.get("dek", "")), "the data key")


@dataclass(frozen=True)
class DataKeyUnsealer:
    """The DEK itself, as an init step unwrapped it: the file's `dek` field is not read."""

    dek: str

    def data_key(self, doc: Mapping[str, Any]) -> str:
        try:
            Fernet(self.dek.encode())
        except (ValueError, TypeError):
            raise KeySourceError("the data key must be a Fernet key (44 url-safe base64 characters)") from None
        return self.dek


class PrivateKeyUnsealer:
    """The DEK sealed to a KMS data key's public half, opened with its private half (unwrapped by KMS)."""

    def __init__(self, private: X25519PrivateKey) -> None:
        self._private = private
        self.public_key = public_key_of(private)

    def data_key(self, doc: Mapping[str, Any]) -> str:
        kms = kms_data_key_of(doc)
        if kms is None:
            raise KeyFileError(
                "key file is sealed under a KEK, not for KMS; KEY_ENCRYPTION=kms opens only KMS-sealed files"
            )
        if kms.public_key != self.public_key:
            raise KeyFileError(
                f"key file is sealed to public key {kms.public_key[:12]}..., but the unwrapped KMS data key's "
                f"public key is {self.public_key[:12]}..."
            )
        return hpke_open(self._private, str(doc.get("dek", "")), "the data key").decode()


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


def _wrapped_dek(kek: str | KmsDataKey, dek: str, iv_seed: bytes | None) -> dict[str, Any]:
    """The key file's fields that carry the DEK: wrapped by a KEK, or sealed to a KMS data key's public half."""
    if isinstance(kek, KmsDataKey):
        ikm = None if iv_seed is None else hmac.new(iv_seed, b"hpke-ikm\0" + dek.encode(), hashlib.sha256).digest()
        return {"kms": kek.as_dict(), "dek": hpke_seal(kek.public_key, dek.encode(), ikm=ikm)}
    return {"kek_id": kek_id(kek), "dek": _encrypt(fernet_from_secret(kek, b"kek"), dek, iv_seed)}


def seal_key_file(
    keyring: KeyFile, kek: str | KmsDataKey, *, dek: str | None = None, iv_seed: bytes | None = None
) -> str:
    """Serialize `keyring` as the JSON key file, encrypting every secret under a DEK that `kek` wraps: a KEK, or a
    KMS data key (the DEK is then sealed to its public half, and no KEK exists)."""
    dek = dek or Fernet.generate_key().decode()
    data_key = Fernet(dek.encode())
    doc: dict[str, Any] = {
        "format": FORMAT,
        **_wrapped_dek(kek, dek, iv_seed),
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
        "hub_token": None
        if keyring.hub_token is None
        else {"ciphertext": _encrypt(data_key, keyring.hub_token, iv_seed)},
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def parse_key_file(text: str) -> dict[str, Any]:
    """The key file's JSON, its format checked; nothing decrypted."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyFileError(f"key file is not JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise KeyFileError(
            f"key file format must be {FORMAT!r}, got {doc.get('format') if isinstance(doc, dict) else type(doc).__name__!r}"
        )
    return doc


def open_key_file(text: str, kek: str | Unsealer) -> KeyFile:
    """Parse and decrypt a key file with a KEK or another Unsealer. Raises KeyFileError naming what is wrong."""
    doc = parse_key_file(text)
    unsealer = KekUnsealer(kek) if isinstance(kek, str) else kek
    dek = unsealer.data_key(doc)
    try:
        data_key = Fernet(dek.encode())
    except (ValueError, TypeError) as exc:
        raise KeyFileError("the data key is not a Fernet key") from exc
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
