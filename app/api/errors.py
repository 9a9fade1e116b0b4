"""One error shape for every 4xx/5xx: {"error": {"type", "message", "code"}}; no stack trace leaves the process.

Access control's refusals (app.access.errors) become their HTTP statuses here: not authenticated 401 (with a
Bearer challenge), not permitted 403, rate limited 429 (with Retry-After and, for a bucket, its X-RateLimit-*
headers), unavailable 503.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.access.errors import AccessRefused, NotAuthenticated, NotPermitted, RateLimited
from app.access.ratelimit import Decision
from app.api.context import context_of
from app.observability.metrics import route_of

log = logging.getLogger("clawbot.errors")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout_error",
}
BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="clawbot"'}


class ApiError(Exception):
    """An error a client should see, with the status, a machine code and a message naming the problem."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None, type_: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.type = type_ or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, code: str, message: str, type_: str | None = None) -> dict[str, Any]:
    return {"error": {"type": type_ or _TYPES.get(status, "server_error"), "message": message, "code": code}}


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.status, exc.code, exc.message, exc.type), status_code=exc.status, headers=exc.headers
    )


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    """A bucket's state as headers; Retry-After only when it refused."""
    headers = {
        "X-RateLimit-Limit": str(decision.limit),
        "X-RateLimit-Remaining": str(decision.remaining),
        "X-RateLimit-Reset": str(decision.reset_s),
    }
    if not decision.allowed:
        headers["Retry-After"] = str(decision.retry_after_s)
    return headers


def refusal_error(refusal: AccessRefused) -> ApiError:
    """The HTTP answer to an access refusal."""
    if isinstance(refusal, NotAuthenticated):
        return ApiError(401, refusal.code, refusal.message, headers=BEARER_CHALLENGE)
    if isinstance(refusal, NotPermitted):
        return ApiError(403, refusal.code, refusal.message)
    if isinstance(refusal, RateLimited):
        headers = rate_limit_headers(refusal.decision) if refusal.decision is not None else {}
        headers["Retry-After"] = str(refusal.retry_after_s)
        return ApiError(429, refusal.code, refusal.message, headers=headers)
    return ApiError(503, refusal.code, refusal.message)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(AccessRefused)
    async def _refused(request: Request, refusal: AccessRefused) -> JSONResponse:
        error = refusal_error(refusal)
        access = getattr(request.app.state, "access", None)
        if access is not None:
            access.record_refusal(context_of(request), route_of(request.scope), error.status, refusal)
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(400, "invalid_request", _describe_validation(exc)), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return JSONResponse(
            error_body(exc.status_code, code, message),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", extra={"route": request.url.path, "error_type": type(exc).__name__}, exc_info=exc)
        return JSONResponse(error_body(500, "internal_error", "internal server error"), status_code=500)
