"""The audit trail of key usage: one structured JSON line per decision (key id, route, status, client address).

Only those fields are written: no credential, token, header or body can reach an audit line,
whatever the caller passes, because the record is built here from named fields alone.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Protocol

AUDIT_LOGGER = "clawbot.audit"
MAX_FIELD_CHARS = 200


class HasKeyId(Protocol):
    # Read-only, so that frozen dataclasses (Principal) match it.
    @property
    def key_id(self) -> str: ...


def _clip(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    # Control characters would let a crafted route or address forge a second line.
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text[:MAX_FIELD_CHARS]


class AuditLog:
    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger(AUDIT_LOGGER)

    def entry(
        self, principal: HasKeyId | None, route: str, status: int, client: str | None, *, reason: str | None = None
    ) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "event": "key_usage",
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "key_id": _clip(getattr(principal, "key_id", None)),
            "via": _clip(getattr(principal, "via", None)),
            "route": _clip(route),
            "status": int(status),
            "client": _clip(client),
        }
        if reason is not None:
            doc["reason"] = _clip(reason)
        return doc

    def log(
        self, principal: HasKeyId | None, route: str, status: int, client: str | None, *, reason: str | None = None
    ) -> None:
        """Write one audit line. `reason` is a fixed code (e.g. 'bad_signature'), never client input."""
        doc = self.entry(principal, route, status, client, reason=reason)
        # The message is the JSON line itself, so the trail reads the same under any log formatter;
        # the fields also go in `extra` for the JSON formatter to index.
        self.logger.info(json.dumps(doc, sort_keys=True), extra={"audit": doc})
