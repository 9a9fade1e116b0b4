"""Probes: /healthz (alive), /readyz (model loaded and warmed). /metrics is on its own port (app.api.metrics_app)."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.errors import error_body

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Process is alive (never fails because of load)")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Model loaded and warmed up")
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    if state.ready and not state.draining:
        return JSONResponse({"status": "ready", "model": state.model_name})
    reason = "draining" if state.draining else ("model failed to load" if state.load_error else "model loading")
    body = error_body(503, "not_ready", reason)
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
