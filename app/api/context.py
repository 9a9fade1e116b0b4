"""Where a request's context (app.access.context.RequestContext) lives: one key of the ASGI scope's state.

The request log middleware puts it there first thing; anything that runs without it (an app built without that
middleware) gets a fresh one on first use.
"""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.types import Scope

from app.access.context import RequestContext

STATE_KEY = "context"


def scope_context(scope: Scope, request_id: str | None = None) -> RequestContext:
    state = scope.setdefault("state", {})
    context = state.get(STATE_KEY)
    if not isinstance(context, RequestContext):
        context = state[STATE_KEY] = RequestContext(request_id=request_id or uuid.uuid4().hex)
    return context


def context_of(request: Request) -> RequestContext:
    return scope_context(request.scope)
