"""Admin API (needs the `admin` scope): the conversation store, paged and exported as NDJSON, and the API keys' metadata."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from app.api.auth import Caller, access_of
from app.storage.conversations import MAX_PAGE_SIZE
from app.storage.stores import Storage

# Left out of the public OpenAPI schema: docs/api/index.md documents the admin API for operators.
router = APIRouter(prefix="/admin", tags=["admin"], include_in_schema=False)


def storage_of(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


KeyIdFilter = Query(default=None, min_length=1, max_length=64, description="only this API key's exchanges")


@router.get("/conversations", summary="Stored exchanges, newest first, paged")
async def conversations(
    request: Request,
    principal: Caller,
    page: int = Query(default=1, ge=1, le=1_000_000),
    page_size: int = Query(default=50, ge=1, le=MAX_PAGE_SIZE),
    key_id: str | None = KeyIdFilter,
) -> dict[str, Any]:
    result = await storage_of(request).conversations.list(page=page, page_size=page_size, key_id=key_id)
    return {
        "items": [ex.to_json() for ex in result.items],
        "total": result.total,
        "page": result.page,
        "page_size": result.page_size,
    }


@router.get("/conversations/export", summary="Every stored exchange as NDJSON, oldest first")
async def export(request: Request, principal: Caller, key_id: str | None = KeyIdFilter) -> StreamingResponse:
    lines = storage_of(request).conversations.export_lines(key_id=key_id)
    safe_id = re.sub(r"[^A-Za-z0-9._-]", "_", key_id) if key_id else None  # the filename goes in a header
    name = f"conversations-{safe_id}.ndjson" if safe_id else "conversations.ndjson"
    return StreamingResponse(
        lines,  # a sync iterator: Starlette reads it in a worker thread, so SQLite never blocks the loop
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/keys", summary="API key ids, scopes and dates (never the keys)")
async def keys(request: Request, principal: Caller) -> dict[str, Any]:
    return {"keys": access_of(request).key_listing()}
