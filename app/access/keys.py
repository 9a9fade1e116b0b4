"""`python -m app.keys`: manage the KEK and the envelope-encrypted key file (init-kek, add, rotate, revoke, list).

Only `add` and `rotate` print a secret: the new raw API key, once. Everything else prints ids,
scopes and dates. Files are written atomically with mode 0600, so a running service that
reloads on change never reads half a file.

KMS: `kms-data-key` has AWS KMS make a key pair whose private half only KMS unwraps (for the stack's `kmsDataKey`,
or `add --kms-data-key` to start a key file sealed for it); the other commands open a KMS-sealed key file through
KMS Decrypt and need no KEK. `unseal-data-key` is the chat pods' init step in the `namespace` key mode.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypedDict

from app.access.kek_secret import read_secret_key
from app.access.keyfile import (
    ApiKeyRecord,
    JwtKeyRecord,
    KekUnsealer,
    KeyFile,
    KeyFileError,
    KmsDataKey,
    kms_data_key_of,
    new_api_key,
    new_secret,
    now_iso,
    open_key_file,
    parse_key_file,
    seal_key_file,
)
from app.access.keyring import SCOPES, key_state, parse_time, read_kek, write_private
from app.access.kms import KmsUnsealer, generate_kms_data_key

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_GRACE_DAYS = 7.0
# A retired JWT key must keep verifying for at least one token lifetime (JWT_TTL_SECONDS is at most 3600).
MIN_JWT_GRACE_S = 3600
# How long a rotated-out JWT key may still sign: replicas read the new key file when the mounted Secret
# updates (the kubelet's sync period, up to about two minutes); until then they sign with the old key.
JWT_RETIRE_DELAY_S = 120


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _kek_path(args: argparse.Namespace) -> Path:
    kek_file = args.kek_file or os.environ.get("KEK_PATH")
    if not kek_file:
        raise CliError("the KEK file is not set: pass --kek-file or set KEK_PATH")
    return Path(kek_file)


Wrap = str | KmsDataKey  # what seals the key file: a KEK, or a KMS data key


def _key_path(args: argparse.Namespace) -> Path:
    key_file = args.key_file or os.environ.get("API_KEY_PATH")
    if not key_file:
        raise CliError("the key file is not set: pass --key-file or set API_KEY_PATH")
    return Path(key_file)


def _open(args: argparse.Namespace, *, create: bool = False) -> tuple[Path, Wrap, KeyFile]:
    """The key file's path, what seals it (its KEK, or the KMS data key it names) and the decrypted ring."""
    key_path = _key_path(args)
    if not key_path.exists():
        if not create:
            raise CliError(f"key file {str(key_path)!r} does not exist; create it with `python -m app.keys add`")
        if getattr(args, "kms_data_key", None):
            try:
                return key_path, KmsDataKey.from_json(args.kms_data_key), KeyFile()
            except KeyFileError as exc:
                raise CliError(f"--kms-data-key: {exc}") from None
        return key_path, read_kek(_kek_path(args), strict=False), KeyFile()
    try:
        text = key_path.read_text()
        kms = kms_data_key_of(parse_key_file(text))
        if kms is not None:  # sealed for KMS: KMS unwraps its data key, and no KEK is involved
            return key_path, kms, open_key_file(text, KmsUnsealer())
        kek = read_kek(_kek_path(args), strict=False)
        return key_path, kek, open_key_file(text, kek)
    except KeyFileError as exc:
        raise CliError(f"key file {str(key_path)!r}: {exc}") from None


def _save(key_path: Path, wrap: Wrap, ring: KeyFile) -> None:
    write_private(key_path, seal_key_file(ring, wrap))


def _scopes(raw: str) -> tuple[str, ...]:
    scopes = tuple(dict.fromkeys(s.strip() for s in raw.split(",") if s.strip()))
    bad = [s for s in scopes if s not in SCOPES]
    if not scopes or bad:
        raise CliError(f"--scopes must be a comma-separated subset of {', '.join(sorted(SCOPES))}, got {raw!r}")
    return scopes


def _check_id(key_id: str) -> str:
    if not ID_PATTERN.match(key_id):
        raise CliError(
            f"--id must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, got {key_id!r}"
        )
    return key_id


def _expiry(args: argparse.Namespace) -> str | None:
    if getattr(args, "expires_at", None):
        parse_time(args.expires_at, "--expires-at")
        return str(args.expires_at)
    days = getattr(args, "expires_in_days", None)
    if days is not None:
        if days <= 0:
            raise CliError(f"--expires-in-days must be positive, got {days}")
        return now_iso(days * 86400)
    return None


def _with_jwt_key(ring: KeyFile) -> KeyFile:
    if ring.jwt_keys:
        return ring
    return replace(
        ring, jwt_keys=(JwtKeyRecord(kid=f"jwt-{int(time.time())}", secret=new_secret(), not_before=now_iso()),)
    )


# -- commands ----------------------------------------------------------------------------------
def cmd_init_kek(args: argparse.Namespace) -> int:
    path = _kek_path(args)
    if path.exists() and not args.force:
        raise CliError(
            f"{str(path)!r} already exists; every key file sealed under it would become unreadable. Pass --force to replace it"
        )
    write_private(path, new_secret() + "\n")
    print(f"wrote a new KEK to {path} (mode 0600)")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    key_path, wrap, ring = _open(args, create=True)
    ring = _with_jwt_key(ring)
    key_id = _check_id(args.id)
    if any(k.id == key_id for k in ring.api_keys):
        raise CliError(f"API key id {key_id!r} already exists in {str(key_path)!r}; choose another --id or use rotate")
    raw = new_api_key()
    record = ApiKeyRecord(
        id=key_id,
        secret=raw,
        scopes=_scopes(args.scopes),
        not_before=args.not_before or now_iso(),
        expires_at=_expiry(args),
    )
    parse_time(record.not_before, "--not-before")
    _save(key_path, wrap, replace(ring, api_keys=(*ring.api_keys, record)))
    print(
        f"added API key {key_id!r} (scopes: {', '.join(record.scopes)}). It is shown once; store it now:",
        file=sys.stderr,
    )
    print(raw)
    return 0


def _earlier(a: str | None, b: str) -> str:
    """The earlier of two key-file times; `a` may be unset."""
    return a if a is not None and (parse_time(a, "a key time") or 0.0) <= (parse_time(b, "a key time") or 0.0) else b


def _retire_jwt_key(key: JwtKeyRecord, retire_at: str, expire_at: str) -> JwtKeyRecord:
    """`key` rotated out: it signs nothing after `retire_at` and verifies nothing after `expire_at` (earlier times kept)."""
    return replace(key, retired_at=_earlier(key.retired_at, retire_at), expires_at=_earlier(key.expires_at, expire_at))


def cmd_rotate(args: argparse.Namespace) -> int:
    key_path, wrap, ring = _open(args)
    grace_s = 0.0 if args.now else args.grace_days * 86400
    if grace_s < 0:
        raise CliError(f"--grace-days must be zero or more, got {args.grace_days}")
    if args.jwt:
        fresh_jwt = JwtKeyRecord(kid=f"jwt-{int(time.time() * 1000)}", secret=new_secret(), not_before=now_iso())
        if args.now:
            retire_at = expire_at = now_iso()
        else:
            retire_at, expire_at = now_iso(JWT_RETIRE_DELAY_S), now_iso(max(grace_s, MIN_JWT_GRACE_S))
        kept = tuple(_retire_jwt_key(k, retire_at, expire_at) for k in ring.jwt_keys)
        _save(key_path, wrap, replace(ring, jwt_keys=(*kept, fresh_jwt)))
        if args.now:
            print(
                f"new JWT signing key {fresh_jwt.kid!r}; older keys are retired now: their tokens stop verifying as soon as "
                "the service reloads the key file (within a second, or on SIGHUP)"
            )
        else:
            print(
                f"new JWT signing key {fresh_jwt.kid!r}; older keys sign nothing after {retire_at} and verify the tokens "
                f"they issued before it until {expire_at}"
            )
        return 0
    if not args.id:
        raise CliError("rotate needs --id KEY_ID (or --jwt to rotate the token signing key)")
    old = next((k for k in ring.api_keys if k.id == args.id), None)
    if old is None:
        raise CliError(f"no API key with id {args.id!r} in {str(key_path)!r}; `python -m app.keys list` shows the ids")
    new_id = _check_id(
        args.new_id or f"{re.sub(r'-r[0-9]{12}$', '', old.id)}-r{time.strftime('%Y%m%d%H%M', time.gmtime())}"
    )
    if any(k.id == new_id for k in ring.api_keys):
        raise CliError(f"API key id {new_id!r} already exists; pass --new-id")
    retire_at = now_iso(grace_s)
    raw = new_api_key()
    fresh = ApiKeyRecord(id=new_id, secret=raw, scopes=old.scopes, not_before=now_iso(), expires_at=_expiry(args))
    keys = tuple(replace(k, expires_at=retire_at) if k.id == old.id else k for k in ring.api_keys)
    _save(key_path, wrap, replace(ring, api_keys=(*keys, fresh)))
    print(
        f"rotated {old.id!r} -> {new_id!r}; {old.id!r} keeps working until {retire_at}. The new key is shown once; store it now:",
        file=sys.stderr,
    )
    print(raw)
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    key_path, wrap, ring = _open(args)
    if not any(k.id == args.id for k in ring.api_keys):
        raise CliError(f"no API key with id {args.id!r} in {str(key_path)!r}; `python -m app.keys list` shows the ids")
    keys = tuple(replace(k, revoked=True) if k.id == args.id else k for k in ring.api_keys)
    _save(key_path, wrap, replace(ring, api_keys=keys))
    print(f"revoked {args.id!r}; running services drop it within a second (or on SIGHUP), with its tokens")
    return 0


def _status(not_before: str | None, expires_at: str | None, revoked: bool, now: float) -> str:
    if revoked:
        return "revoked"
    return key_state(False, parse_time(not_before, "not_before"), parse_time(expires_at, "expires_at"), now)


class _ApiKeyRow(TypedDict):
    """One API key as `list` shows it (and prints it with --json)."""

    id: str
    scopes: list[str]
    not_before: str | None
    expires_at: str | None
    status: str


def cmd_list(args: argparse.Namespace) -> int:
    _, _, ring = _open(args)
    now = time.time()
    api: list[_ApiKeyRow] = [
        {
            "id": k.id,
            "scopes": list(k.scopes),
            "not_before": k.not_before,
            "expires_at": k.expires_at,
            "status": _status(k.not_before, k.expires_at, k.revoked, now),
        }
        for k in ring.api_keys
    ]
    jwt = [
        {
            "kid": k.kid,
            "not_before": k.not_before,
            "expires_at": k.expires_at,
            "retired_at": k.retired_at,
            "status": _status(k.not_before, k.expires_at, False, now),
        }
        for k in ring.jwt_keys
    ]
    if args.json:
        print(json.dumps({"api_keys": api, "jwt_keys": jwt}, indent=2))
        return 0
    print(f"{'ID':<32} {'SCOPES':<22} {'STATUS':<14} {'NOT BEFORE':<21} EXPIRES")
    for a in api:
        print(
            f"{a['id']:<32} {','.join(a['scopes']):<22} {a['status']:<14} {a['not_before'] or '-':<21} {a['expires_at'] or 'never'}"
        )
    print(f"\n{'JWT KID':<32} {'':<22} {'STATUS':<14} {'NOT BEFORE':<21} EXPIRES")
    for j in jwt:
        print(f"{j['kid']:<32} {'':<22} {j['status']:<14} {j['not_before'] or '-':<21} {j['expires_at'] or 'never'}")
    return 0


def cmd_kms_data_key(args: argparse.Namespace) -> int:
    data_key, _ = generate_kms_data_key(args.kms_key_id)  # the unwrapped half is dropped here, never written
    print(
        f"KMS key {data_key.key_id} wrapped a new data key; set it on the stack with\n"
        "  pulumi config set kmsDataKey \"$(cat <this output>)\"\n"
        "or start a key file sealed for it with `python -m app.keys add --kms-data-key \"$(cat <this output>)\" ...`",
        file=sys.stderr,
    )
    print(data_key.to_json())
    return 0


def cmd_unseal_data_key(args: argparse.Namespace) -> int:
    """The init step: the KEK from its Secret (or file), the data key out, and the KEK nowhere but in this process."""
    if bool(args.kek_secret) == bool(args.kek_file):
        raise CliError("unseal-data-key needs exactly one of --kek-secret NAMESPACE/NAME/KEY or --kek-file")
    kek = read_secret_key(args.kek_secret) if args.kek_secret else read_kek(Path(args.kek_file), strict=True)
    key_path = _key_path(args)
    try:
        dek = KekUnsealer(kek).data_key(parse_key_file(key_path.read_text()))
    except OSError as exc:
        raise CliError(f"key file {str(key_path)!r} cannot be read: {exc.strerror or exc}") from None
    except KeyFileError as exc:
        raise CliError(f"key file {str(key_path)!r}: {exc}") from None
    write_private(Path(args.out), dek + "\n")
    print(f"unsealed the data key of {key_path} into {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app.keys", description=__doc__.splitlines()[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def files(p: argparse.ArgumentParser, key_file: bool = True) -> None:
        if key_file:
            p.add_argument("--key-file", help="the key file (default: $API_KEY_PATH)")
        p.add_argument("--kek-file", help="the key-encryption key file (default: $KEK_PATH)")

    p = sub.add_parser("init-kek", help="create a new key-encryption key file (0600)")
    files(p, key_file=False)
    p.add_argument(
        "--force", action="store_true", help="replace an existing KEK (key files sealed under it become unreadable)"
    )
    p.set_defaults(func=cmd_init_kek)

    p = sub.add_parser("add", help="add an API key and print it once (creates the key file if needed)")
    files(p)
    p.add_argument(
        "--kms-data-key", help="a new key file: seal it for this KMS data key (kms-data-key's output), not a KEK"
    )
    p.add_argument("--id", required=True, help="the key id: shown in logs, metrics and the admin API")
    p.add_argument("--scopes", default="chat", help="comma-separated: chat, admin, benchmark (default: chat)")
    p.add_argument("--not-before", help="ISO-8601 time the key starts working (default: now)")
    p.add_argument("--expires-at", help="ISO-8601 expiry")
    p.add_argument("--expires-in-days", type=float, help="expiry relative to now")
    p.set_defaults(func=cmd_add)

    p = sub.add_parser(
        "rotate", help="replace an API key (old one keeps working for --grace-days) or, with --jwt, the signing key"
    )
    files(p)
    p.add_argument("--id", help="the API key to replace")
    p.add_argument("--new-id", help="id of the replacement (default: ID-rYYYYMMDDHHMM)")
    p.add_argument(
        "--grace-days", type=float, default=DEFAULT_GRACE_DAYS, help="how long the old key keeps working (default: 7)"
    )
    p.add_argument("--expires-at", help="ISO-8601 expiry of the new key")
    p.add_argument("--expires-in-days", type=float, help="expiry of the new key relative to now")
    p.add_argument("--jwt", action="store_true", help="rotate the JWT signing key instead")
    p.add_argument(
        "--now",
        action="store_true",
        help="emergency: retire the old key at once (no grace; with --jwt, its tokens stop verifying on reload)",
    )
    p.set_defaults(func=cmd_rotate)

    p = sub.add_parser("revoke", help="revoke an API key (its tokens stop working too)")
    files(p)
    p.add_argument("--id", required=True)
    p.set_defaults(func=cmd_revoke)

    p = sub.add_parser("list", help="list key ids, scopes and dates (never secrets)")
    files(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "kms-data-key", help="have AWS KMS make a data key only it can unwrap; prints it as JSON (no secret)"
    )
    p.add_argument("--kms-key-id", required=True, help="the KMS key: ARN (its region is used), key id or alias/NAME")
    p.set_defaults(func=cmd_kms_data_key)

    p = sub.add_parser("unseal-data-key", help="init step: unwrap the key file's data key with the KEK into --out")
    p.add_argument("--key-file", help="the key file (default: $API_KEY_PATH)")
    p.add_argument("--kek-secret", help="NAMESPACE/NAME/KEY of the Secret holding the KEK, read with the pod's token")
    p.add_argument("--kek-file", help="the KEK in a file instead")
    p.add_argument("--out", required=True, help="where the data key goes (a memory-backed volume)")
    p.set_defaults(func=cmd_unseal_data_key)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (CliError, KeyFileError) as exc:
        print(f"python -m app.keys {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
