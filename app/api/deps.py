"""Dependencies the chat routes share: a JSON body of valid Unicode text, and a ready model."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.body_text import check_request_text
from app.api.errors import ApiError
from app.api.serving import ChatRunner


async def require_json(request: Request) -> None:
    """A JSON body whose every string is valid Unicode (app.api.body_text), checked before the route's model."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise ApiError(
            415, "unsupported_media_type", f"Content-Type must be application/json, got {content_type or 'none'!r}"
        )
    await check_request_text(request)


def ready_runner(request: Request) -> ChatRunner:
    state = request.app.state
    if state.draining:
        raise ApiError(
            503, "shutting_down", "the service is shutting down; retry on another replica", headers={"Retry-After": "1"}
        )
    if not state.ready or state.runner is None:
        raise ApiError(503, "model_loading", "the model is still loading; retry shortly", headers={"Retry-After": "5"})
    runner: ChatRunner = state.runner
    return runner


JsonBody = Depends(require_json)
Runner = Annotated[ChatRunner, Depends(ready_runner)]
