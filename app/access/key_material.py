"""Key material at start: the production key files, or a local KEK and API key made for development."""

from __future__ import annotations

import hmac
import logging
import sys
from dataclasses import replace
from pathlib import Path

from app.access.keyfile import (
    ApiKeyRecord,
    JwtKeyRecord,
    KeyFile,
    KeyFileError,
    Unsealer,
    new_api_key,
    new_secret,
    now_iso,
    open_key_file,
    seal_key_file,
)
from app.access.keyring import DataKeyFile, KekFile, KeyRing, digest, read_kek, write_private
from app.access.kms import KmsUnsealer
from app.settings import Settings

log = logging.getLogger("clawbot.keys")

DEV_KEY_ID = "dev"
DEV_SCOPES = ("chat", "admin")


class KeyMaterialError(RuntimeError):
    """The key material cannot be loaded; the message names the file and what is wrong."""


def _unsealer(settings: Settings) -> tuple[Unsealer, list[tuple[str, Path | None]]]:
    """What opens the key file's data key under KEY_ENCRYPTION, and the files it needs besides the key file."""
    if settings.key_encryption == "kms":
        return KmsUnsealer(), []  # the key file names its KMS key; the KEK never leaves KMS
    if settings.key_encryption == "data-key-file":
        return DataKeyFile(settings.data_key_path or Path()), [("DATA_KEY_PATH", settings.data_key_path)]
    return KekFile(settings.kek_path or Path(), strict=True), [("KEK_PATH", settings.kek_path)]


def production_key_ring(settings: Settings) -> KeyRing:
    unsealer, files = _unsealer(settings)
    needed = [("API_KEY_PATH", settings.api_key_path), *files]
    if any(path is None for _, path in needed):
        raise KeyMaterialError(f"{' and '.join(n for n, _ in needed)} must be set in production (APP_ENV=production)")
    for name, path in needed:
        if path is not None and not path.is_file():
            raise KeyMaterialError(f"{name} {str(path)!r} does not exist or is not a file")
    assert settings.api_key_path is not None
    try:
        return KeyRing(settings.api_key_path, settings.kek_path, strict=True, unsealer=unsealer)
    except KeyFileError as exc:
        raise KeyMaterialError(str(exc)) from None


def development_key_ring(settings: Settings) -> KeyRing:
    """Development: the configured files if they exist, else a local KEK and key file under DATA_DIR/dev-keys/."""
    if settings.api_key_path and settings.kek_path and settings.api_key_path.is_file() and settings.kek_path.is_file():
        return KeyRing(settings.api_key_path, settings.kek_path, strict=False)
    dev_dir = settings.data_dir / "dev-keys"
    dev_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    kek_path, key_path = dev_dir / "kek", dev_dir / "keys.json"
    if not kek_path.exists():
        write_private(kek_path, new_secret() + "\n")
    kek = read_kek(kek_path, strict=False)
    ring = KeyFile()
    if key_path.exists():
        try:
            ring = open_key_file(key_path.read_text(), kek)
        except KeyFileError as exc:
            log.warning(
                "development key file unreadable; making a new one", extra={"path": str(key_path), "error": str(exc)}
            )
    changed = False
    printed: str | None = None
    dev_api_key = settings.dev_api_key.get_secret_value() if settings.dev_api_key else None
    if dev_api_key:
        wanted = digest(dev_api_key)
        if not any(hmac.compare_digest(wanted, digest(k.secret)) and not k.revoked for k in ring.api_keys):
            others = tuple(k for k in ring.api_keys if k.id != DEV_KEY_ID)
            dev = ApiKeyRecord(id=DEV_KEY_ID, secret=dev_api_key, scopes=DEV_SCOPES, not_before=now_iso(-60))
            ring = replace(ring, api_keys=(*others, dev))
            changed = True
    elif not any(not k.revoked for k in ring.api_keys):
        printed = new_api_key()
        others = tuple(k for k in ring.api_keys if k.id != DEV_KEY_ID)
        ring = replace(
            ring,
            api_keys=(*others, ApiKeyRecord(id=DEV_KEY_ID, secret=printed, scopes=DEV_SCOPES, not_before=now_iso(-60))),
        )
        changed = True
    if not ring.jwt_keys:
        ring = replace(ring, jwt_keys=(JwtKeyRecord(kid="dev-jwt-1", secret=new_secret(), not_before=now_iso(-60)),))
        changed = True
    if changed:
        write_private(key_path, seal_key_file(ring, kek))
    if printed is not None:
        # stdout, once, on creation: the one place a secret is shown. It is never logged.
        print(
            f"clawbot: development API key (shown once; stored encrypted in {key_path}):\n  KEY={printed}",
            file=sys.stdout,
            flush=True,
        )
    elif not dev_api_key and not changed:
        log.info("development keys loaded", extra={"path": str(key_path), "hint": "python -m app.keys rotate --id dev"})
    return KeyRing(key_path, kek_path, strict=False)


def open_key_ring(settings: Settings) -> KeyRing:
    """The key ring the service verifies against: real files in production, local ones in development."""
    return development_key_ring(settings) if settings.development else production_key_ring(settings)
