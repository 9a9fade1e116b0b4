"""The web console: `/` serves its page, `/console/<asset>` its script and stylesheet, from app/console/."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.api.errors import ApiError

CONSOLE_DIR = Path(__file__).resolve().parents[1] / "console"
# An explicit list, not a directory mount: nothing else under app/ can be fetched by a crafted path,
# and the metrics route label stays one fixed value.
ASSETS: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# Revalidate on every load (cheap, ETag-based) so a rolled-out console never runs against a stale script.
_CACHE = {"Cache-Control": "no-cache"}

router = APIRouter(tags=["console"], include_in_schema=False)


@router.get("/")
async def console_page() -> FileResponse:
    return FileResponse(CONSOLE_DIR / "index.html", media_type="text/html; charset=utf-8", headers=_CACHE)


@router.get("/console/{asset}")
async def console_asset(asset: str) -> FileResponse:
    media_type = ASSETS.get(asset)
    if media_type is None:
        raise ApiError(404, "not_found", f"no console asset {asset!r}; the console serves {', '.join(sorted(ASSETS))}")
    return FileResponse(CONSOLE_DIR / asset, media_type=media_type, headers=_CACHE)
