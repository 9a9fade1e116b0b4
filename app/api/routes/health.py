"""Probes and metrics: /healthz (alive), /readyz (model loaded and warmed), /metrics (Prometheus)."""
from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

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


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=True)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
