"""Why access control turns a request away. app.api maps each kind to its HTTP status and headers.

`code` is the machine-readable reason the client sees; `reason` the fixed code the audit trail and
`clawbot_auth_failures{reason}` record (None: nothing to audit); neither ever holds a credential.
"""

from __future__ import annotations

from app.access.ratelimit import Decision


class AccessRefused(Exception):
    def __init__(self, code: str, message: str, *, reason: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.retry_after_s = retry_after_s


class NotAuthenticated(AccessRefused):
    """No credentials, or ones that are malformed, unknown, expired or revoked."""


class NotPermitted(AccessRefused):
    """The caller is known, but its key lacks what the request needs (a scope)."""


class RateLimited(AccessRefused):
    """A limit is reached: requests a minute (per key or address), failed authentications, the key's token budget or
    its concurrency cap. `decision` is the bucket that refused, where one did."""

    def __init__(
        self, code: str, message: str, *, reason: str, retry_after_s: int, decision: Decision | None = None
    ) -> None:
        super().__init__(code, message, reason=reason, retry_after_s=retry_after_s)
        self.decision = decision


class AccessUnavailable(AccessRefused):
    """Access control cannot decide right now (no current token signing key): the operator must act."""
