"""The key ring: decrypts the envelope, keeps only hashes, follows the file as it changes, refuses placeholders."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from app.access import keyring as keyring_module
from app.access.keyfile import KeyFileError, new_secret, now_iso
from app.access.keyring import KeyRing, digest
from tests.app.conftest import KeyFiles


def test_verify_knows_each_key_and_its_state(keyfiles: KeyFiles) -> None:
    ring = KeyRing(keyfiles.key_path, keyfiles.kek_path, strict=True)
    assert ring.verify(keyfiles.raw["alice"])[0].id == "alice"  # type: ignore[union-attr]
    assert ring.verify(keyfiles.raw["alice"])[1] == "active"
    assert ring.verify(keyfiles.raw["root"])[0].scopes == frozenset({"chat", "admin"})  # type: ignore[union-attr]
    assert ring.verify(keyfiles.raw["gone"])[1] == "revoked"
    assert ring.verify(keyfiles.raw["stale"])[1] == "expired"
    assert ring.verify(keyfiles.raw["later"])[1] == "not_yet_valid"
    assert ring.verify("ck-" + "x" * 43) == (None, "unknown_key")
    assert ring.verify(keyfiles.raw["alice"][:-1]) == (None, "unknown_key")


def test_only_hashes_stay_in_memory(keyfiles: KeyFiles) -> None:
    ring = KeyRing(keyfiles.key_path, keyfiles.kek_path, strict=True)
    held = repr(vars(ring)) + repr(ring.api_keys)
    for raw in keyfiles.raw.values():
        assert raw not in held
    assert {k.digest for k in ring.api_keys} == {digest(r) for r in keyfiles.raw.values()}


def test_verification_compares_every_stored_hash(keyfiles: KeyFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    ring = KeyRing(keyfiles.key_path, keyfiles.kek_path, strict=True)
    calls: list[bytes] = []
    real = keyring_module.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return real(a, b)

    monkeypatch.setattr(keyring_module.hmac, "compare_digest", counting)
    first = ring.api_keys[0]
    assert ring.verify(keyfiles.raw[first.id])[0] == first  # a match on the first entry...
    assert len(calls) == len(ring.api_keys)  # ...still compares against all of them


def test_reloads_when_the_file_changes_and_keeps_old_ring_on_a_bad_file(
    instant_reload: None, keyfiles: KeyFiles, caplog: pytest.LogCaptureFixture
) -> None:
    ring = KeyRing(keyfiles.key_path, keyfiles.kek_path, strict=True)
    bob = keyfiles.add("bob")
    keyfiles.revoke("alice")
    keyfiles.write()
    assert ring.verify(bob)[1] == "active"
    assert ring.verify(keyfiles.raw["alice"])[1] == "revoked"

    keyfiles.key_path.write_text('{"format": "clawbot-keyring/1", "dek": "garbage"}')
    with caplog.at_level(logging.ERROR, logger="clawbot.keyring"):
        assert ring.verify(bob)[1] == "active"  # the broken file is refused; the last good ring serves
    assert any("reload failed" in r.getMessage() for r in caplog.records)


def test_sighup_style_request_reloads_even_without_an_mtime_change(keyfiles: KeyFiles) -> None:
    ring = KeyRing(keyfiles.key_path, keyfiles.kek_path, strict=True)
    stat = keyfiles.key_path.stat()
    carol = keyfiles.add("carol")
    keyfiles.write()
    os.utime(keyfiles.key_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    ring._mtime = ring._stat()
    assert ring.verify(carol)[0] is None
    ring.request_reload()
    assert ring.verify(carol)[0] is not None


def test_newest_jwt_key_signs_and_the_previous_still_verifies(keyfiles: KeyFiles) -> None:
    from app.access.keyfile import JwtKeyRecord

    keyfiles.jwt.append(JwtKeyRecord(kid="jwt-2", secret=new_secret(), not_before=now_iso(-10)))
    keyfiles.jwt.append(
        JwtKeyRecord(kid="jwt-0", secret=new_secret(), not_before=now_iso(-7200), expires_at=now_iso(-3600))
    )
    keyfiles.write()
    ring = KeyRing(keyfiles.key_path, keyfiles.kek_path, strict=True)
    assert ring.signing_key().kid == "jwt-2"
    assert ring.verifying_key("jwt-1") is not None
    assert ring.verifying_key("jwt-0") is None  # retired
    assert ring.verifying_key("nope") is None


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("wrong_kek", "sealed under KEK"),
        ("placeholder_kek", "placeholder"),
        ("short_kek", "at least 32"),
        ("missing_file", "cannot be read"),
        ("no_jwt", "no JWT signing keys"),
    ],
)
def test_startup_errors_name_the_file_and_the_problem(keyfiles: KeyFiles, breakage: str, message: str) -> None:
    if breakage == "wrong_kek":
        keyfiles.kek_path.write_text(new_secret())
    elif breakage == "placeholder_kek":
        keyfiles.kek = "changeme-changeme-changeme-changeme-0123"
        keyfiles.kek_path.write_text(keyfiles.kek)
        keyfiles.write()
    elif breakage == "short_kek":
        keyfiles.kek_path.write_text("short")
    elif breakage == "missing_file":
        keyfiles.key_path.unlink()
    elif breakage == "no_jwt":
        keyfiles.jwt.clear()
        keyfiles.write()
    with pytest.raises(KeyFileError, match=message) as err:
        KeyRing(keyfiles.key_path, keyfiles.kek_path, strict=True)
    assert ("KEK_PATH" in str(err.value)) or ("API_KEY_PATH" in str(err.value))
    assert keyfiles.kek not in str(err.value)


def test_unknown_scope_is_refused(keyfiles: KeyFiles) -> None:
    keyfiles.add("weird", ("chat", "superuser"))
    keyfiles.write()
    with pytest.raises(KeyFileError, match=r"unknown scope.*superuser"):
        KeyRing(keyfiles.key_path, keyfiles.kek_path, strict=True)


def test_key_files_are_written_private(tmp_path: Path) -> None:
    target = tmp_path / "k" / "file"
    keyring_module.write_private(target, "x")
    assert target.stat().st_mode & 0o777 == 0o600
