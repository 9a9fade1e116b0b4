"""`python -m app.keys`: the operator's tool for the KEK and the key file; prints a secret only when it makes one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.access.keyring import KeyRing
from app.access.keys import main

ROOT = Path(__file__).resolve().parents[3]


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    return str(tmp_path / "keys.json"), str(tmp_path / "kek")


def test_full_lifecycle_from_a_shell(tmp_path: Path) -> None:
    env = {**os.environ, "API_KEY_PATH": str(tmp_path / "keys.json"), "KEK_PATH": str(tmp_path / "kek")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.keys", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )

    assert cli("init-kek").returncode == 0
    assert (tmp_path / "kek").stat().st_mode & 0o777 == 0o600
    added = cli("add", "--id", "ops", "--scopes", "chat,admin")
    assert added.returncode == 0, added.stderr
    raw = added.stdout.strip()
    assert raw.startswith("ck-") and len(raw) > 40 and "\n" not in raw  # stdout is the key alone: scriptable
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600
    assert raw not in (tmp_path / "keys.json").read_text()  # sealed, not stored
    listed = cli("list", "--json")
    assert raw not in listed.stdout and raw not in listed.stderr
    doc = json.loads(listed.stdout)
    assert [(k["id"], k["scopes"], k["status"]) for k in doc["api_keys"]] == [("ops", ["chat", "admin"], "active")]
    assert len(doc["jwt_keys"]) == 1 and "secret" not in listed.stdout.lower()
    ring = KeyRing(tmp_path / "keys.json", tmp_path / "kek", strict=True)
    assert ring.verify(raw)[0] is not None and ring.verify(raw)[1] == "active"


def test_init_kek_refuses_to_overwrite(capsys: pytest.CaptureFixture[str], files: tuple[str, str]) -> None:
    _, kek = files
    assert _run(capsys, "init-kek", "--kek-file", kek)[0] == 0
    before = Path(kek).read_text()
    code, _, err = _run(capsys, "init-kek", "--kek-file", kek)
    assert code == 2 and "already exists" in err and "--force" in err
    assert Path(kek).read_text() == before


def test_rotate_keeps_both_keys_live_then_retires_the_old(
    capsys: pytest.CaptureFixture[str], files: tuple[str, str]
) -> None:
    keys, kek = files
    _run(capsys, "init-kek", "--kek-file", kek)
    _, old_raw, _ = _run(capsys, "add", "--key-file", keys, "--kek-file", kek, "--id", "primary")
    code, new_raw, err = _run(
        capsys, "rotate", "--key-file", keys, "--kek-file", kek, "--id", "primary", "--new-id", "secondary"
    )
    assert code == 0 and "keeps working until" in err
    ring = KeyRing(Path(keys), Path(kek), strict=True)
    old_entry, new_entry = ring.verify(old_raw.strip())[0], ring.verify(new_raw.strip())[0]
    assert old_entry is not None and new_entry is not None
    assert old_entry.state(ring.clock()) == new_entry.state(ring.clock()) == "active"  # the overlap: both work
    assert old_entry.expires_at is not None and new_entry.expires_at is None
    # After the grace period only the new key works.
    assert (
        old_entry.state(old_entry.expires_at + 1) == "expired" and new_entry.state(old_entry.expires_at + 1) == "active"
    )


def test_jwt_rotation_adds_a_newer_signing_key(capsys: pytest.CaptureFixture[str], files: tuple[str, str]) -> None:
    keys, kek = files
    _run(capsys, "init-kek", "--kek-file", kek)
    _run(capsys, "add", "--key-file", keys, "--kek-file", kek, "--id", "a")
    first = KeyRing(Path(keys), Path(kek), strict=True).signing_key()
    code, out, _ = _run(capsys, "rotate", "--jwt", "--key-file", keys, "--kek-file", kek)
    assert code == 0
    ring = KeyRing(Path(keys), Path(kek), strict=True)
    assert ring.signing_key().kid != first.kid
    assert ring.verifying_key(first.kid) is not None  # still verifies tokens it signed
    assert first.secret.decode() not in out


def test_revoke_and_list(capsys: pytest.CaptureFixture[str], files: tuple[str, str]) -> None:
    keys, kek = files
    _run(capsys, "init-kek", "--kek-file", kek)
    _, raw, _ = _run(capsys, "add", "--key-file", keys, "--kek-file", kek, "--id", "temp", "--expires-in-days", "1")
    assert _run(capsys, "revoke", "--key-file", keys, "--kek-file", kek, "--id", "temp")[0] == 0
    assert KeyRing(Path(keys), Path(kek), strict=True).verify(raw.strip())[1] == "revoked"
    code, out, _ = _run(capsys, "list", "--key-file", keys, "--kek-file", kek)
    assert code == 0 and "temp" in out and "revoked" in out and raw.strip() not in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["add", "--id", "bad id!"], "--id must be"),
        (["add", "--id", "x", "--scopes", "chat,root"], "--scopes must be"),
        (["add", "--id", "dup"], "already exists"),
        (["revoke", "--id", "nobody"], "no API key with id 'nobody'"),
        (["rotate", "--id", "nobody"], "no API key with id 'nobody'"),
        (["rotate"], "rotate needs --id"),
    ],
)
def test_mistakes_get_one_clear_line(
    capsys: pytest.CaptureFixture[str], files: tuple[str, str], args: list[str], message: str
) -> None:
    keys, kek = files
    _run(capsys, "init-kek", "--kek-file", kek)
    _run(capsys, "add", "--key-file", keys, "--kek-file", kek, "--id", "dup")
    code, out, err = _run(capsys, *args, "--key-file", keys, "--kek-file", kek)
    assert code == 2 and message in err and out == ""


def test_missing_paths_are_named(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("API_KEY_PATH", raising=False)
    monkeypatch.delenv("KEK_PATH", raising=False)
    code, _, err = _run(capsys, "list")
    assert code == 2 and "API_KEY_PATH" in err


def test_jwt_rotation_retires_the_old_key_and_now_ends_it_at_once(
    capsys: pytest.CaptureFixture[str], files: tuple[str, str]
) -> None:
    keys, kek = files
    _run(capsys, "init-kek", "--kek-file", kek)
    _run(capsys, "add", "--key-file", keys, "--kek-file", kek, "--id", "a")
    first = KeyRing(Path(keys), Path(kek), strict=True).signing_key()
    _run(capsys, "rotate", "--jwt", "--key-file", keys, "--kek-file", kek)
    ring = KeyRing(Path(keys), Path(kek), strict=True)
    retired = ring.verifying_key(first.kid)
    assert retired is not None and retired.retired_at is not None and retired.expires_at is not None
    # It signs nothing after its retirement (soon: replicas may still be reading the new file) and verifies a while longer.
    assert ring.clock() < retired.retired_at <= ring.clock() + 300 < retired.expires_at
    second = ring.signing_key()
    code, out, _ = _run(capsys, "rotate", "--jwt", "--now", "--key-file", keys, "--kek-file", kek)
    assert code == 0 and "retired now" in out
    ring = KeyRing(Path(keys), Path(kek), strict=True)
    assert ring.verifying_key(first.kid) is None and ring.verifying_key(second.kid) is None
    assert ring.signing_key().kid not in (first.kid, second.kid)
    listed = json.loads(_run(capsys, "list", "--json", "--key-file", keys, "--kek-file", kek)[1])
    assert [k["retired_at"] is not None for k in listed["jwt_keys"]] == [True, True, False]
