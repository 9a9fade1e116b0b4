"""Probes: /healthz (alive), /readyz (model loaded and warmed). /metrics is on its own port (app.api.metrics_app).

/healthz fails only when the engine's worker has died: that state never heals, so Kubernetes
should restart the pod. Load never fails it (a busy replica is alive, just not fast).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.errors import error_body
from app.api.schemas import Health, Readiness

router = APIRouter(tags=["operations"])


def _engine_failure(request: Request) -> str | None:
    engine = request.app.state.engine
    return None if engine is None else engine.failure


@router.get(
    "/healthz", response_model=Health, summary="Process is alive and its engine works (never fails because of load)"
)
async def healthz(request: Request) -> Health | JSONResponse:
    if _engine_failure(request) is not None:
        # The cause is in the log (and clawbot_engine_failures_total); the probe only needs the verdict.
        return JSONResponse(
            error_body(503, "engine_failed", "the generation engine failed; restart this replica"),
            status_code=503,
            headers={"Retry-After": "5"},
        )
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, summary="Model loaded and warmed up")
async def readyz(request: Request) -> Readiness | JSONResponse:
    state = request.app.state
    failed = _engine_failure(request) is not None
    if state.ready and not state.draining and not failed:
        return Readiness(status="ready", model=state.model_name)
    if failed:
        reason = "engine failed"
    elif state.draining:
        reason = "draining"
    else:
        reason = "model failed to load" if state.load_error else "model loading"
    body = error_body(503, "not_ready", reason)
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
