"""The live key ring: API-key hashes and JWT signing keys decrypted from the key file, reloaded when it changes.

Only SHA-256 digests of API keys stay in memory; the raw keys are dropped as soon as the
file is decrypted. A reload that fails keeps the ring that was working and logs why.
In the service, `await ring.refresh()` does the checking and reloading in a worker thread
(reading and decrypting the files must not stall the event loop), and the accessors only read.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.access.keyfile import (
    MIN_KEK_LENGTH,
    DataKeyUnsealer,
    KekUnsealer,
    KeyFile,
    KeyFileError,
    KeySourceError,
    Unsealer,
    iso_time,
    open_key_file,
)

log = logging.getLogger("clawbot.keyring")

# chat: the chat routes and /v1/models; admin: the /admin routes; benchmark: `ignore_eos` (fixed-length generations).
SCOPES: frozenset[str] = frozenset({"chat", "admin", "benchmark"})
# Keys that may ask for `ignore_eos`: it makes every request run to max_tokens, a cost only load tests need.
IGNORE_EOS_SCOPES: frozenset[str] = frozenset({"benchmark", "admin"})
RELOAD_CHECK_INTERVAL_S = 1.0
# Words that mark a value copied from an example rather than generated; refused outside development.
PLACEHOLDER_MARKERS = ("changeme", "change-me", "change_me", "placeholder", "example", "replace-me", "todo", "xxxxxxxx")
MIN_DISTINCT_CHARS = 8
# Metric label (`clawbot_auth_failures{reason}`) for each refused key state, whether the key came bare or behind a JWT.
KEY_STATE_REASONS = {"revoked": "revoked_key", "expired": "key_expired", "not_yet_valid": "key_not_yet_valid"}


def parse_time(value: str | None, what: str) -> float | None:
    """ISO-8601 (`2026-01-01T00:00:00Z`) to epoch seconds; None stays None."""
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        raise KeyFileError(f"{what} must be an ISO-8601 time like 2026-01-01T00:00:00Z, got {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def format_time(epoch: float | None) -> str | None:
    return None if epoch is None else iso_time(epoch)


def digest(raw_key: str) -> bytes:
    return hashlib.sha256(raw_key.encode("utf-8", "surrogatepass")).digest()


def key_state(revoked: bool, not_before: float | None, expires_at: float | None, now: float) -> str:
    """'active', 'revoked', 'expired' or 'not_yet_valid'."""
    if revoked:
        return "revoked"
    if not_before is not None and now < not_before:
        return "not_yet_valid"
    if expires_at is not None and now >= expires_at:
        return "expired"
    return "active"


def looks_like_placeholder(secret: str) -> bool:
    lowered = secret.lower()
    return any(marker in lowered for marker in PLACEHOLDER_MARKERS) or len(set(secret)) < MIN_DISTINCT_CHARS


@dataclass(frozen=True)
class ApiKeyEntry:
    """One API key as the service holds it: metadata and the SHA-256 digest, never the key."""

    id: str
    scopes: frozenset[str]
    not_before: float | None
    expires_at: float | None
    revoked: bool
    digest: bytes

    def state(self, now: float) -> str:
        return key_state(self.revoked, self.not_before, self.expires_at, now)


@dataclass(frozen=True)
class JwtKey:
    kid: str
    secret: bytes
    not_before: float | None
    expires_at: float | None
    # Set when a rotation replaced it: it signs nothing more, and verifies only tokens issued before this time.
    retired_at: float | None = None

    def current(self, now: float) -> bool:
        return (self.not_before is None or self.not_before <= now) and (
            self.expires_at is None or now < self.expires_at
        )

    def retired(self, now: float) -> bool:
        return self.retired_at is not None and self.retired_at <= now


@dataclass(frozen=True)
class RingContents:
    api_keys: tuple[ApiKeyEntry, ...]
    jwt_keys: tuple[JwtKey, ...]
    hub_token: str | None


def contents_of(keyring: KeyFile, *, source: str, strict: bool) -> RingContents:
    """Validate a decrypted key file and keep only what the service needs. `strict` refuses placeholders."""
    api: list[ApiKeyEntry] = []
    seen: set[str] = set()
    for rec in keyring.api_keys:
        if rec.id in seen:
            raise KeyFileError(f"{source}: API key id {rec.id!r} appears twice; ids must be unique")
        seen.add(rec.id)
        bad_scopes = set(rec.scopes) - SCOPES
        if bad_scopes:
            raise KeyFileError(
                f"{source}: API key {rec.id!r} has unknown scope(s) {sorted(bad_scopes)}; allowed: {sorted(SCOPES)}"
            )
        if strict and looks_like_placeholder(rec.secret):
            raise KeyFileError(
                f"{source}: API key {rec.id!r} looks like a placeholder; generate one with `python -m app.keys add`"
            )
        api.append(
            ApiKeyEntry(
                id=rec.id,
                scopes=frozenset(rec.scopes),
                not_before=parse_time(rec.not_before, f"{source}: not_before of API key {rec.id!r}"),
                expires_at=parse_time(rec.expires_at, f"{source}: expires_at of API key {rec.id!r}"),
                revoked=rec.revoked,
                digest=digest(rec.secret),
            )
        )
    jwt: list[JwtKey] = []
    for jrec in keyring.jwt_keys:
        if len(jrec.secret) < MIN_KEK_LENGTH:
            raise KeyFileError(
                f"{source}: JWT key {jrec.kid!r} must be at least {MIN_KEK_LENGTH} characters, got {len(jrec.secret)}"
            )
        if strict and looks_like_placeholder(jrec.secret):
            raise KeyFileError(f"{source}: JWT key {jrec.kid!r} looks like a placeholder")
        jwt.append(
            JwtKey(
                kid=jrec.kid,
                secret=jrec.secret.encode(),
                not_before=parse_time(jrec.not_before, f"{source}: not_before of JWT key {jrec.kid!r}"),
                expires_at=parse_time(jrec.expires_at, f"{source}: expires_at of JWT key {jrec.kid!r}"),
                retired_at=parse_time(jrec.retired_at, f"{source}: retired_at of JWT key {jrec.kid!r}"),
            )
        )
    if not api:
        raise KeyFileError(f"{source} holds no API keys; add one with `python -m app.keys add`")
    if not jwt:
        raise KeyFileError(f"{source} holds no JWT signing keys; add one with `python -m app.keys rotate --jwt`")
    return RingContents(api_keys=tuple(api), jwt_keys=tuple(jwt), hub_token=keyring.hub_token)


def read_kek(path: Path, *, strict: bool) -> str:
    try:
        kek = path.read_text().strip()
    except OSError as exc:
        raise KeySourceError(f"KEK_PATH {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    if len(kek) < MIN_KEK_LENGTH:
        raise KeySourceError(f"KEK_PATH {str(path)!r} must hold at least {MIN_KEK_LENGTH} characters, got {len(kek)}")
    if strict and looks_like_placeholder(kek):
        raise KeySourceError(
            f"KEK_PATH {str(path)!r} holds a placeholder; create a real one with `python -m app.keys init-kek`"
        )
    return kek


class KekFile:
    """KEK_PATH: the KEK read from its file at every load (a rotated KEK is picked up with the key file)."""

    def __init__(self, path: Path, *, strict: bool) -> None:
        self.path, self.strict = path, strict
        self.watched = (path,)

    def data_key(self, doc: Mapping[str, Any]) -> str:
        return KekUnsealer(read_kek(self.path, strict=self.strict)).data_key(doc)


class DataKeyFile:
    """DATA_KEY_PATH: the data key itself, which an init step unwrapped with a KEK this container never sees."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.watched = (path,)

    def data_key(self, doc: Mapping[str, Any]) -> str:
        try:
            dek = self.path.read_text().strip()
        except OSError as exc:
            raise KeySourceError(f"DATA_KEY_PATH {str(self.path)!r} cannot be read: {exc.strerror or exc}") from None
        try:
            return DataKeyUnsealer(dek).data_key(doc)
        except KeySourceError as exc:
            raise KeySourceError(f"DATA_KEY_PATH {str(self.path)!r}: {exc}") from None


def load_contents(key_path: Path, unsealer: Path | Unsealer, *, strict: bool) -> RingContents:
    """Read, open and check the key file; `unsealer` is a KEK file's path or what opens the data key (KMS, a data key)."""
    opener = KekFile(unsealer, strict=strict) if isinstance(unsealer, Path) else unsealer
    try:
        text = key_path.read_text()
    except OSError as exc:
        raise KeyFileError(f"API_KEY_PATH {str(key_path)!r} cannot be read: {exc.strerror or exc}") from None
    try:
        ring = open_key_file(text, opener)
    except KeyFileError as exc:
        if isinstance(exc, KeySourceError):
            raise  # about what opens the file, not the file
        raise KeyFileError(f"API_KEY_PATH {str(key_path)!r}: {exc}") from None
    return contents_of(ring, source=f"API_KEY_PATH {str(key_path)!r}", strict=strict)


class KeyRing:
    """Verifies API keys and hands out JWT keys; follows the key file as it changes.

    The key file's data key is opened by the KEK at `kek_path`, or by `unsealer` (KMS, or a data key an init step
    unwrapped); files an unsealer reads (`watched`) count as changes of the key file.
    """

    def __init__(
        self,
        key_path: Path,
        kek_path: Path | None = None,
        *,
        strict: bool,
        clock: Callable[[], float] = time.time,
        unsealer: Unsealer | None = None,
    ) -> None:
        if unsealer is None:
            if kek_path is None:
                raise KeyFileError("a key ring needs KEK_PATH or another way to open the key file's data key")
            unsealer = KekFile(kek_path, strict=strict)
        self.key_path = key_path
        self.kek_path = kek_path
        self.unsealer = unsealer
        self._watched: tuple[Path, ...] = tuple(getattr(unsealer, "watched", ()))
        self.strict = strict
        self.clock = clock
        # False where an event loop calls `refresh()` before each use (AccessControl): the accessors then never block.
        self.reload_on_access = True
        self._lock = threading.Lock()
        self._reload_requested = False
        self._next_check = 0.0
        self._mtime = self._stat()
        self._contents = load_contents(key_path, unsealer, strict=strict)  # a startup failure is fatal: raise it
        self.last_used: dict[str, float] = {}

    def _stat(self) -> tuple[int, ...] | None:
        try:
            st = self.key_path.stat()
            others = tuple(p.stat().st_mtime_ns for p in self._watched)
        except OSError:
            return None
        # Size and the KEK's mtime too: a rewrite within one mtime tick, or a new KEK, is still a change.
        return (st.st_mtime_ns, st.st_size, *others)

    # -- reloading ---------------------------------------------------------------------------
    def request_reload(self) -> None:
        """Called from the SIGHUP handler: reload on the next use, whatever the mtime says."""
        self._reload_requested = True

    def reload(self) -> bool:
        """Re-read the key file now. On failure keep the current ring, log, and return False."""
        stamp = self._stat()
        try:
            contents = load_contents(self.key_path, self.unsealer, strict=self.strict)
        except KeyFileError as exc:
            log.error("key file reload failed; keeping the keys loaded before", extra={"error": str(exc)})
            self._mtime = stamp  # do not retry a broken file on every request; the next change retries
            return False
        with self._lock:
            self._contents = contents
            self._mtime = stamp
        log.info(
            "key file reloaded",
            extra={"api_key_ids": [k.id for k in contents.api_keys], "jwt_kids": [k.kid for k in contents.jwt_keys]},
        )
        return True

    def maybe_reload(self) -> None:
        """Reload if asked to (SIGHUP) or if the files changed; looks at most once per RELOAD_CHECK_INTERVAL_S."""
        if self._reload_requested:
            self._reload_requested = False
            self.reload()
        elif self._check_due():
            self._reload_if_changed()

    async def refresh(self) -> None:
        """`maybe_reload` for the event loop: the stat, read and decrypt run in a worker thread."""
        if self._reload_requested:
            self._reload_requested = False
            await asyncio.to_thread(self.reload)
        elif self._check_due():
            await asyncio.to_thread(self._reload_if_changed)

    def _check_due(self) -> bool:
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + RELOAD_CHECK_INTERVAL_S
        return True

    def _reload_if_changed(self) -> None:
        if self._stat() != self._mtime:
            self.reload()

    def _on_access(self) -> None:
        if self.reload_on_access:
            self.maybe_reload()

    # -- API keys ----------------------------------------------------------------------------
    @property
    def api_keys(self) -> tuple[ApiKeyEntry, ...]:
        self._on_access()
        return self._contents.api_keys

    @property
    def hub_token(self) -> str | None:
        return self._contents.hub_token

    def verify(self, raw_key: str) -> tuple[ApiKeyEntry | None, str]:
        """Find the key whose digest matches. Returns (entry, state); entry is None for an unknown key.

        Every stored digest is compared, match or not, so the time taken does not say which key matched.
        """
        presented = digest(raw_key)
        found: ApiKeyEntry | None = None
        for entry in self.api_keys:
            if hmac.compare_digest(presented, entry.digest):
                found = entry
        if found is None:
            return None, "unknown_key"
        return found, found.state(self.clock())

    def entry(self, key_id: str) -> ApiKeyEntry | None:
        for e in self.api_keys:
            if e.id == key_id:
                return e
        return None

    def mark_used(self, key_id: str) -> None:
        self.last_used[key_id] = self.clock()

    # -- JWT keys ----------------------------------------------------------------------------
    def signing_key(self) -> JwtKey:
        """The newest current key that is not retired: latest not_before, then latest in the file."""
        self._on_access()
        now = self.clock()
        current = [
            (k.not_before or 0.0, i, k)
            for i, k in enumerate(self._contents.jwt_keys)
            if k.current(now) and not k.retired(now)
        ]
        if not current:
            raise KeyFileError("no JWT signing key is currently valid; add one with `python -m app.keys rotate --jwt`")
        return max(current, key=lambda t: (t[0], t[1]))[2]

    def verifying_key(self, kid: str) -> JwtKey | None:
        self._on_access()
        now = self.clock()
        for k in self._contents.jwt_keys:
            if k.kid == kid and k.current(now):
                return k
        return None


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically with mode 0600, so a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
