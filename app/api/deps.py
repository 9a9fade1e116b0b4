"""Dependencies the chat routes share: JSON content type and a ready model."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.serving import ChatRunner
from app.api.errors import ApiError


def require_json(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise ApiError(
            415, "unsupported_media_type", f"Content-Type must be application/json, got {content_type or 'none'!r}"
        )


def ready_runner(request: Request) -> ChatRunner:
    state = request.app.state
    if state.draining:
        raise ApiError(503, "shutting_down", "the service is shutting down; retry on another replica", headers={"Retry-After": "1"})
    if not state.ready or state.runner is None:
        raise ApiError(503, "model_loading", "the model is still loading; retry shortly", headers={"Retry-After": "5"})
    runner: ChatRunner = state.runner
    return runner


JsonBody = Depends(require_json)
Runner = Annotated[ChatRunner, Depends(ready_runner)]
