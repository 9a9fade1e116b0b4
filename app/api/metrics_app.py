"""The metrics listener: GET /metrics in Prometheus text format, on METRICS_PORT, apart from the public API port."""
from __future__ import annotations

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.errors import install_error_handlers
from app.observability.metrics import Metrics


def create_metrics_app(metrics: Metrics) -> FastAPI:
    """A separate ASGI app, so the Service behind the LoadBalancer (port 18789) never carries /metrics."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)

    @app.get("/metrics")
    async def scrape() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
