"""Network rules in the app: the client address (X-Forwarded-For only via trusted proxies) and ALLOWED/BLOCKED_CIDRS."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from app.access.netrules import NetRules
from app.observability.metrics import Metrics
from app.settings import Settings
from tests.app.conftest import KeyFiles, build_security_app, metric_value

RULES = NetRules(
    allowed_cidrs=["10.0.0.0/8", "2001:db8::/32"], blocked_cidrs=["10.66.0.0/16"], trusted_proxies=["192.168.1.0/24"]
)


@pytest.mark.parametrize(
    "peer, xff, expected",
    [
        ("10.1.2.3", [], "10.1.2.3"),
        ("10.1.2.3", ["1.2.3.4"], "10.1.2.3"),  # an untrusted peer cannot claim another address
        ("192.168.1.5", ["10.9.9.9"], "10.9.9.9"),  # a trusted proxy vouches for its client
        ("192.168.1.5", ["6.6.6.6, 10.9.9.9"], "10.9.9.9"),  # the client's own prefix is not believed
        ("192.168.1.5", ["6.6.6.6, 10.9.9.9, 192.168.1.7"], "10.9.9.9"),  # chained trusted proxies are skipped
        ("192.168.1.5", ["6.6.6.6", "10.9.9.9"], "10.9.9.9"),  # repeated headers read as one list
        ("192.168.1.5", ["not-an-ip"], "192.168.1.5"),
        ("192.168.1.5", ["10.9.9.9:4431"], "10.9.9.9"),
        ("::ffff:10.1.2.3", [], "10.1.2.3"),
        ("192.168.1.5", [], "192.168.1.5"),
    ],
)
def test_client_address(peer: str, xff: list[str], expected: str) -> None:
    assert RULES.client_address(peer, xff) == expected


@pytest.mark.parametrize(
    "address, allowed, reason",
    [
        ("10.1.2.3", True, "ok"),
        ("2001:db8::1", True, "ok"),
        ("10.66.1.1", False, "blocked"),  # blocked wins over allowed
        ("8.8.8.8", False, "not_allowed"),
        ("2001:db9::1", False, "not_allowed"),
        ("testclient", False, "unknown_address"),
    ],
)
def test_check(address: str, allowed: bool, reason: str) -> None:
    verdict = RULES.check(address)
    assert (verdict.allowed, verdict.reason) == (allowed, reason)


def test_no_rules_allows_everyone() -> None:
    assert NetRules(allowed_cidrs=[], blocked_cidrs=[], trusted_proxies=[]).check("testclient").allowed


def test_bad_cidr_is_named() -> None:
    with pytest.raises(ValueError, match="BLOCKED_CIDRS.*'10.0.0.300/8'"):
        NetRules(allowed_cidrs=[], blocked_cidrs=["10.0.0.300/8"], trusted_proxies=[])


def test_service_refuses_blocked_addresses_before_looking_at_credentials(
    make_settings: Callable[..., Settings], keyfiles: KeyFiles, metrics: Metrics
) -> None:
    settings = make_settings(
        allowed_cidrs=("10.0.0.0/8",), blocked_cidrs=("10.66.0.0/16",), trusted_proxies=("127.0.0.0/8",)
    )
    app = build_security_app(settings, metrics)
    bearer = {"Authorization": f"Bearer {keyfiles.raw['alice']}"}
    with TestClient(app, client=("127.0.0.1", 5000)) as c:
        ok = c.get("/v1/models", headers={**bearer, "X-Forwarded-For": "10.1.1.1"})
        assert ok.status_code == 200 and ok.json()["client"] == "10.1.1.1"
        for xff in ("10.66.0.9", "8.8.8.8"):
            r = c.get("/v1/models", headers={**bearer, "X-Forwarded-For": xff})
            assert r.status_code == 403 and r.json()["error"]["code"] == "address_not_allowed", xff
            assert keyfiles.raw["alice"] not in r.text
        # /api/auth is behind the same rule: a blocked address cannot even trade a key for a token.
        r = c.post("/api/auth", json={"api_key": keyfiles.raw["alice"]}, headers={"X-Forwarded-For": "8.8.8.8"})
        assert r.status_code == 403
    assert metric_value(metrics, "clawbot_auth_failures_total", reason="ip_blocked") == 1
    assert metric_value(metrics, "clawbot_auth_failures_total", reason="ip_not_allowed") == 2


def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    make_settings: Callable[..., Settings], keyfiles: KeyFiles
) -> None:
    settings = make_settings(allowed_cidrs=("10.0.0.0/8",), trusted_proxies=("192.168.0.0/16",))
    with TestClient(build_security_app(settings), client=("8.8.8.8", 5000)) as c:
        r = c.get(
            "/v1/models", headers={"Authorization": f"Bearer {keyfiles.raw['alice']}", "X-Forwarded-For": "10.1.1.1"}
        )
        assert r.status_code == 403 and "8.8.8.8" in r.json()["error"]["message"]
