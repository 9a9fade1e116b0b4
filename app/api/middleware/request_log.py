"""Per-request bookkeeping as pure ASGI middleware: request id, metrics by route and status, one JSON log line.

A client that disconnects before its response is complete is recorded with status 499 (nginx's
"client closed request"), whether a handler noticed and raised ClientDisconnected or a stream
was cut off mid-way: it is the client's doing, so it never counts as a 5xx.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.access.context import RequestContext
from app.api.context import scope_context
from app.observability.metrics import Metrics, route_of

log = logging.getLogger("clawbot.request")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
CLIENT_CLOSED_REQUEST = 499


class ClientDisconnected(Exception):
    """Raised by a handler that saw its client go away: no response is sent, the request is logged as 499."""


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
        context = scope_context(scope, request_id)
        status = 500
        disconnected = completed = False

        async def receive_wrapper() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status, completed
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                completed = True
            await send(message)

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except ClientDisconnected:
            disconnected = True  # nobody is left to answer
        finally:
            if disconnected and not completed:
                status = CLIENT_CLOSED_REQUEST
            # A stream that fails after its 200 went out sets the status it really ended with.
            if context.final_status is not None:
                status = context.final_status
            self._record(scope, context, status, time.perf_counter() - started)

    def _record(self, scope: Scope, context: RequestContext, status: int, elapsed: float) -> None:
        route = route_of(scope)
        self.metrics.requests.labels(route=route, status=str(status)).inc()
        self.metrics.request_duration.labels(route=route).observe(elapsed)
        principal = context.principal
        if principal is not None and not context.audited:
            # Refusals are audited where they are answered (app.api.errors); here every other call a key made.
            access = getattr(getattr(scope.get("app"), "state", None), "access", None)
            if access is not None:
                access.audit.log(principal, route, status, context.client_ip)
        usage = context.usage
        client = context.client_ip or (scope.get("client") or ("", 0))[0]
        log.info(
            "request",
            extra={
                "request_id": context.request_id,
                "method": scope.get("method"),
                "route": route,
                "status": status,
                "latency_ms": round(elapsed * 1000, 1),
                "key_id": getattr(principal, "key_id", None),
                "client": client,
                "prompt_tokens": None if usage is None else usage.prompt,
                "completion_tokens": None if usage is None else usage.completion,
                "cached": None if usage is None else usage.cached,
                "cached_tokens": None if usage is None else usage.cached_tokens,
            },
        )
