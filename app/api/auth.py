"""FastAPI dependencies that put a caller's identity on a route: the one seam between the routes and app.access.control.

`CurrentPrincipal` (seed API): a JWT from POST /api/auth. `ApiPrincipal` (/v1/*): a JWT or the
API key itself, as OpenAI clients send it. `AdminPrincipal`: either, with the `admin` scope.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.errors import ApiError
from app.access.control import AccessControl, Principal


def access_of(request: Request) -> AccessControl:
    access: AccessControl | None = getattr(request.app.state, "access", None)
    if access is None:
        # The lifespan has not run (or failed): refuse rather than let a request through unauthenticated.
        raise ApiError(503, "starting", "the service is starting; retry shortly", headers={"Retry-After": "1"})
    return access


async def jwt_principal(request: Request) -> Principal:
    return await access_of(request).authenticate(request, allow_api_key=False)


async def api_principal(request: Request) -> Principal:
    return await access_of(request).authenticate(request, allow_api_key=True)


async def admin_principal(request: Request) -> Principal:
    access = access_of(request)
    principal = await access.authenticate(request, allow_api_key=True)
    access.require_scope(request, principal, "admin")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(jwt_principal)]
ApiPrincipal = Annotated[Principal, Depends(api_principal)]
AdminPrincipal = Annotated[Principal, Depends(admin_principal)]
