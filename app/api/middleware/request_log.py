"""Per-request bookkeeping as pure ASGI middleware: request id, metrics by route and status, one JSON log line."""
from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability.metrics import Metrics, route_of

log = logging.getLogger("clawbot.request")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestObserver:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # A stream that fails after its 200 went out sets the status it really ended with (final_status).
            self._record(scope, state, request_id, state.get("final_status", status), time.perf_counter() - started)

    def _record(self, scope: Scope, state: dict[str, Any], request_id: str, status: int, elapsed: float) -> None:
        route = route_of(scope)
        self.metrics.requests.labels(route=route, status=str(status)).inc()
        self.metrics.request_duration.labels(route=route).observe(elapsed)
        principal = state.get("principal")
        if principal is not None and not state.get("audited"):
            # Refusals are audited where they are decided (app.access.control); here every other call a key made.
            access = getattr(getattr(scope.get("app"), "state", None), "access", None)
            if access is not None:
                access.audit.log(principal, route, status, state.get("client_ip"))
        tokens = state.get("tokens") or {}
        client = state.get("client_ip") or (scope.get("client") or ("", 0))[0]
        log.info(
            "request",
            extra={
                "request_id": request_id,
                "method": scope.get("method"),
                "route": route,
                "status": status,
                "latency_ms": round(elapsed * 1000, 1),
                "key_id": getattr(principal, "key_id", None),
                "client": client,
                "prompt_tokens": tokens.get("prompt"),
                "completion_tokens": tokens.get("completion"),
                "cached": tokens.get("cached"),
            },
        )
