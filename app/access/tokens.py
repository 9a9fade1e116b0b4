"""Short-lived HS256 bearer tokens: issued for a verified API key, checked strictly on every request.

Signed with the key ring's newest JWT key (named by the `kid` header); any current JWT key
verifies, so tokens signed before a rotation keep working until they expire. A rotated-out key
verifies only tokens issued before its retirement: one it signs later (a leaked key minting
tokens during the grace window) is refused. A token whose API key was revoked or expired since
issue is refused.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from app.access.keyring import KEY_STATE_REASONS, ApiKeyEntry, KeyRing

ALGORITHM = "HS256"
MAX_TTL_S = 3600
REQUIRED_CLAIMS = ["exp", "iat", "nbf", "sub", "jti", "aud"]
# Tolerance for clock skew between replicas (a token issued by one pod, checked by another).
LEEWAY_S = 5


class TokenError(Exception):
    """A bearer token was refused. `reason` is a metric label; `message` is safe to return to the client."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class TokenClaims:
    key_id: str
    scopes: frozenset[str]
    jti: str
    expires_at: int


class TokenService:
    def __init__(self, ring: KeyRing, *, audience: str, ttl_s: int, clock: Callable[[], float] = time.time) -> None:
        if not 1 <= ttl_s <= MAX_TTL_S:
            raise ValueError(f"JWT_TTL_SECONDS must be between 1 and {MAX_TTL_S}, got {ttl_s}")
        self.ring = ring
        self.audience = audience
        self.ttl_s = ttl_s
        self.clock = clock

    def issue(self, entry: ApiKeyEntry) -> tuple[str, int]:
        """A token for `entry`, never outliving the key itself. Returns (token, expires_in seconds)."""
        now = int(self.clock())
        exp = now + self.ttl_s
        if entry.expires_at is not None:
            exp = min(exp, int(entry.expires_at))
        key = self.ring.signing_key()
        claims = {
            "sub": entry.id,
            "aud": self.audience,
            "iat": now,
            "nbf": now,
            "exp": exp,
            "jti": secrets.token_hex(16),
            "scopes": sorted(entry.scopes),
        }
        token = jwt.encode(claims, key.secret, algorithm=ALGORITHM, headers={"kid": key.kid})
        return token, max(exp - now, 0)

    def verify(self, token: str) -> TokenClaims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("malformed_token", "the bearer token is not a valid JWT") from None
        if header.get("alg") != ALGORITHM:
            # Checked before any key is touched: `none`, RS256 with an HMAC secret as "public key", HS512...
            raise TokenError("bad_algorithm", f"the bearer token must be signed with {ALGORITHM}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenError("unknown_kid", "the bearer token names no signing key")
        key = self.ring.verifying_key(kid)
        if key is None:
            raise TokenError("unknown_kid", "the bearer token was signed with a key this service does not accept")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.secret,
                algorithms=[ALGORITHM],
                audience=self.audience,
                leeway=LEEWAY_S,
                options={
                    "require": REQUIRED_CLAIMS,
                    "verify_signature": True,
                    "verify_exp": True,
                    "verify_nbf": True,
                    "verify_iat": True,
                    "verify_aud": True,
                },
            )
        except jwt.ExpiredSignatureError:
            raise TokenError(
                "token_expired", "the bearer token has expired; get a new one from POST /api/auth"
            ) from None
        except jwt.ImmatureSignatureError:
            raise TokenError("token_not_yet_valid", "the bearer token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise TokenError("wrong_audience", "the bearer token was issued for another service") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError("missing_claim", f"the bearer token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise TokenError("bad_signature", "the bearer token's signature does not verify") from None
        except jwt.PyJWTError:
            raise TokenError("malformed_token", "the bearer token is not a valid JWT") from None
        checked = self._check_claims(claims)
        if key.retired_at is not None and claims["iat"] > key.retired_at + LEEWAY_S:
            # A backdated iat cannot get round this for long: exp - iat is capped at MAX_TTL_S.
            raise TokenError(
                "signed_after_retirement",
                "the bearer token was signed with a retired key; get a new one from POST /api/auth",
            )
        return checked

    def _check_claims(self, claims: dict[str, Any]) -> TokenClaims:
        sub, exp, iat, jti = claims.get("sub"), claims.get("exp"), claims.get("iat"), claims.get("jti")
        if not isinstance(sub, str) or not isinstance(jti, str) or not isinstance(exp, int) or not isinstance(iat, int):
            raise TokenError("malformed_token", "the bearer token's claims have the wrong types")
        if exp - iat > MAX_TTL_S:
            raise TokenError("token_too_long_lived", f"the bearer token lives longer than {MAX_TTL_S} seconds")
        if iat > self.clock() + LEEWAY_S:
            raise TokenError("token_not_yet_valid", "the bearer token is issued in the future")
        entry = self.ring.entry(sub)
        if entry is None:
            raise TokenError("revoked_key", "the API key behind this token no longer exists")
        state = entry.state(self.clock())
        if state != "active":
            raise TokenError(KEY_STATE_REASONS[state], f"the API key behind this token is {state.replace('_', ' ')}")
        raw_scopes = claims.get("scopes", [])
        if not isinstance(raw_scopes, list) or not all(isinstance(s, str) for s in raw_scopes):
            raise TokenError("malformed_token", "the bearer token's scopes claim must be a list of strings")
        # A key that lost a scope since issue loses it for its tokens too.
        return TokenClaims(key_id=sub, scopes=frozenset(raw_scopes) & entry.scopes, jti=jti, expires_at=exp)
