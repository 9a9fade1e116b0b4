"""Bearer tokens: what /api/auth issues, and every forged or stale token a hostile client might send, refused with 401."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from app.access.keyfile import JwtKeyRecord, new_secret, now_iso
from app.observability.metrics import Metrics
from app.settings import Settings
from tests.app.conftest import KeyFiles, build_security_app, metric_value

AUD = "clawbot"


@pytest.fixture
def client(instant_reload: None, make_settings: Callable[..., Settings], metrics: Metrics) -> Iterator[TestClient]:
    # These tests send dozens of forged tokens from one address on purpose: the failed-auth limit is not their subject.
    settings = make_settings(jwt_ttl_s=600, auth_failures_per_minute=1_000_000)
    with TestClient(build_security_app(settings, metrics)) as c:
        yield c


def _token(c: TestClient, raw: str) -> str:
    r = c.post("/api/auth", json={"api_key": raw})
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def _b64(doc: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": "alice", "aud": AUD, "iat": now, "nbf": now, "exp": now + 300, "jti": "j1", "scopes": ["chat"]}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def test_issued_token_has_the_contract_claims_and_works(client: TestClient, keyfiles: KeyFiles) -> None:
    r = client.post("/api/auth", json={"api_key": keyfiles.raw["alice"]})
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 600
    header = jwt.get_unverified_header(body["token"])
    assert header == {"alg": "HS256", "typ": "JWT", "kid": "jwt-1"}
    claims = jwt.decode(body["token"], keyfiles.jwt_secret("jwt-1"), algorithms=["HS256"], audience=AUD)
    assert claims["sub"] == "alice" and claims["scopes"] == ["chat"] and claims["aud"] == AUD
    assert claims["exp"] - claims["iat"] == 600 and claims["nbf"] == claims["iat"] and len(claims["jti"]) >= 16
    ok = client.post("/api/chat", json={"q": 1}, headers={"Authorization": f"Bearer {body['token']}"})
    assert ok.status_code == 200 and ok.json()["key_id"] == "alice" and ok.json()["via"] == "jwt"


@pytest.mark.parametrize("which", ["gone", "stale", "later", "unknown"])
def test_auth_refuses_revoked_expired_future_and_unknown_keys(
    client: TestClient, keyfiles: KeyFiles, which: str
) -> None:
    raw = keyfiles.raw.get(which, "ck-" + "z" * 43)
    r = client.post("/api/auth", json={"api_key": raw})
    assert r.status_code == 401
    assert r.json() == {
        "error": {
            "type": "authentication_error",
            "code": "invalid_api_key",
            "message": "the API key is invalid, expired or revoked",
        }
    }


def _forgeries(kf: KeyFiles) -> dict[str, tuple[str, str]]:
    """name -> (token, metric reason)."""
    secret = kf.jwt_secret("jwt-1")
    hs = lambda claims, **kw: jwt.encode(claims, secret, algorithm="HS256", headers={"kid": "jwt-1", **kw})  # noqa: E731
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    good = hs(_claims())
    head, payload, sig = good.split(".")
    now = int(time.time())
    return {
        "alg_none": (_b64({"alg": "none", "typ": "JWT", "kid": "jwt-1"}) + "." + payload + ".", "bad_algorithm"),
        "alg_none_upper": (_b64({"alg": "None", "kid": "jwt-1"}) + "." + payload + ".", "bad_algorithm"),
        "hs512": (jwt.encode(_claims(), secret, algorithm="HS512", headers={"kid": "jwt-1"}), "bad_algorithm"),
        "rs256": (jwt.encode(_claims(), rsa_pem, algorithm="RS256", headers={"kid": "jwt-1"}), "bad_algorithm"),
        # RS256 header over an HMAC made with the shared secret: the classic key-confusion forgery.
        "rs256_header_hmac_sig": (_b64({"alg": "RS256", "kid": "jwt-1"}) + "." + payload + "." + sig, "bad_algorithm"),
        "wrong_signature": (
            jwt.encode(_claims(), new_secret(), algorithm="HS256", headers={"kid": "jwt-1"}),
            "bad_signature",
        ),
        "tampered_payload": (
            head + "." + _b64(_claims(sub="root", scopes=["chat", "admin"])) + "." + sig,
            "bad_signature",
        ),
        "expired": (hs(_claims(iat=now - 900, nbf=now - 900, exp=now - 300)), "token_expired"),
        "nbf_future": (hs(_claims(nbf=now + 600, exp=now + 900)), "token_not_yet_valid"),
        "iat_future": (hs(_claims(iat=now + 600, nbf=now, exp=now + 900)), "token_not_yet_valid"),
        "wrong_aud": (hs(_claims(aud="someone-else")), "wrong_audience"),
        "no_aud": (hs(_claims(aud=None)), "missing_claim"),
        "no_exp": (hs(_claims(exp=None)), "missing_claim"),
        "no_sub": (hs(_claims(sub=None)), "missing_claim"),
        "no_iat": (hs(_claims(iat=None)), "missing_claim"),
        "too_long_lived": (hs(_claims(exp=now + 86400)), "token_too_long_lived"),
        "unknown_kid": (jwt.encode(_claims(), secret, algorithm="HS256", headers={"kid": "jwt-999"}), "unknown_kid"),
        "no_kid": (jwt.encode(_claims(), secret, algorithm="HS256"), "unknown_kid"),
        "revoked_key": (hs(_claims(sub="gone")), "revoked_key"),
        "expired_key": (hs(_claims(sub="stale")), "key_expired"),
        "deleted_key": (hs(_claims(sub="nobody")), "revoked_key"),
        "garbage": ("not.a.jwt", "malformed_token"),
        "garbage_b64": ("eyJ.eyJ.xyz", "malformed_token"),
    }


def test_every_forged_or_stale_token_is_refused_with_the_error_shape(
    client: TestClient, keyfiles: KeyFiles, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name, (token, reason) in _forgeries(keyfiles).items():
        before = metric_value(metrics, "clawbot_auth_failures_total", reason=reason)
        for path, method in (("/api/chat", "post"), ("/v1/models", "get")):
            r = getattr(client, method)(
                path, headers={"Authorization": f"Bearer {token}"}, **({"json": {}} if method == "post" else {})
            )
            assert r.status_code == 401, (name, path, r.text)
            err = r.json()["error"]
            assert set(r.json()) == {"error"} and set(err) == {"type", "message", "code"}, name
            assert err["type"] == "authentication_error", name
            assert err["code"] in ("invalid_token", "token_expired"), name
            for secret_part in (token, token.split(".")[-1] or "~", keyfiles.jwt_secret("jwt-1")):
                assert secret_part not in r.text, name
        assert metric_value(metrics, "clawbot_auth_failures_total", reason=reason) == before + 2, name
    logged = "\n".join(r.getMessage() + repr(vars(r)) for r in caplog.records)
    assert keyfiles.jwt_secret("jwt-1") not in logged
    for name, (token, _) in _forgeries(keyfiles).items():
        if len(token) > 20:
            assert token.split(".")[1] not in logged, name


def test_a_token_dies_with_its_key(client: TestClient, keyfiles: KeyFiles) -> None:
    token = _token(client, keyfiles.raw["alice"])
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.post("/api/chat", json={}, headers=bearer).status_code == 200
    keyfiles.revoke("alice")
    keyfiles.write()
    r = client.post("/api/chat", json={}, headers=bearer)
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


def test_jwt_rotation_keeps_old_tokens_valid_and_signs_with_the_new_key(client: TestClient, keyfiles: KeyFiles) -> None:
    old = _token(client, keyfiles.raw["alice"])
    keyfiles.jwt[0] = JwtKeyRecord(
        kid="jwt-1", secret=keyfiles.jwt[0].secret, not_before=keyfiles.jwt[0].not_before, expires_at=now_iso(3600)
    )
    keyfiles.jwt.append(JwtKeyRecord(kid="jwt-2", secret=new_secret(), not_before=now_iso()))
    keyfiles.write()
    new = _token(client, keyfiles.raw["alice"])
    assert jwt.get_unverified_header(new)["kid"] == "jwt-2"
    for t in (old, new):
        assert client.post("/api/chat", json={}, headers={"Authorization": f"Bearer {t}"}).status_code == 200
    keyfiles.jwt.pop(0)  # the old key retired: its tokens stop
    keyfiles.write()
    assert client.post("/api/chat", json={}, headers={"Authorization": f"Bearer {old}"}).status_code == 401
    assert client.post("/api/chat", json={}, headers={"Authorization": f"Bearer {new}"}).status_code == 200


def test_token_never_outlives_its_key(make_settings: Callable[..., Settings], keyfiles: KeyFiles) -> None:
    keyfiles.add("brief", ("chat",), expires_at=now_iso(120))
    keyfiles.write()
    with TestClient(build_security_app(make_settings(jwt_ttl_s=3600))) as c:
        body = c.post("/api/auth", json={"api_key": keyfiles.raw["brief"]}).json()
    assert 60 < body["expires_in"] <= 120


def test_seed_route_takes_tokens_not_raw_keys_but_v1_takes_both(client: TestClient, keyfiles: KeyFiles) -> None:
    raw = {"Authorization": f"Bearer {keyfiles.raw['alice']}"}
    r = client.post("/api/chat", json={}, headers=raw)
    assert r.status_code == 401 and "POST /api/auth" in r.json()["error"]["message"]
    v1 = client.get("/v1/models", headers=raw)
    assert v1.status_code == 200 and v1.json()["via"] == "api_key"
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {keyfiles.raw['gone']}"}).status_code == 401
    missing = client.get("/v1/models")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_credentials"
    assert missing.headers["www-authenticate"].startswith("Bearer")


def _signed(kf: KeyFiles, kid: str, **claims: Any) -> str:
    return jwt.encode(_claims(**claims), kf.jwt_secret(kid), algorithm="HS256", headers={"kid": kid})


def test_a_retired_key_verifies_only_tokens_it_signed_before_its_retirement(
    client: TestClient, keyfiles: KeyFiles
) -> None:
    now = int(time.time())
    # jwt-1 was rotated out ten minutes ago but is still inside its grace window; jwt-2 signs now.
    keyfiles.jwt[0] = JwtKeyRecord(
        kid="jwt-1",
        secret=keyfiles.jwt_secret("jwt-1"),
        not_before=now_iso(-7200),
        retired_at=now_iso(-600),
        expires_at=now_iso(3600),
    )
    keyfiles.jwt.append(JwtKeyRecord(kid="jwt-2", secret=new_secret(), not_before=now_iso(-600)))
    keyfiles.write()
    before = _signed(keyfiles, "jwt-1", iat=now - 900, nbf=now - 900, exp=now + 600)
    after = _signed(keyfiles, "jwt-1", iat=now - 60, nbf=now - 60, exp=now + 600)  # a leaked key minting tokens
    assert client.post("/api/chat", json={}, headers={"Authorization": f"Bearer {before}"}).status_code == 200
    r = client.post("/api/chat", json={}, headers={"Authorization": f"Bearer {after}"})
    assert r.status_code == 401 and "retired key" in r.json()["error"]["message"]
    assert jwt.get_unverified_header(_token(client, keyfiles.raw["alice"]))["kid"] == "jwt-2"


def test_emergency_jwt_rotation_stops_the_old_keys_tokens_in_the_running_service(
    client: TestClient, keyfiles: KeyFiles, metrics: Metrics, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.access.keys import main as keys_cli

    old = _token(client, keyfiles.raw["alice"])
    bearer = {"Authorization": f"Bearer {old}"}
    assert client.post("/api/chat", json={}, headers=bearer).status_code == 200
    assert (
        keys_cli(
            ["rotate", "--jwt", "--now", "--key-file", str(keyfiles.key_path), "--kek-file", str(keyfiles.kek_path)]
        )
        == 0
    )
    assert "retired now" in capsys.readouterr().out
    r = client.post("/api/chat", json={}, headers=bearer)  # the service reloads the changed file on this request
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
    assert metric_value(metrics, "clawbot_auth_failures_total", reason="unknown_kid") == 1
    new = _token(client, keyfiles.raw["alice"])
    assert jwt.get_unverified_header(new)["kid"] != "jwt-1"
    assert client.post("/api/chat", json={}, headers={"Authorization": f"Bearer {new}"}).status_code == 200
