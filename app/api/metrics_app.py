"""The metrics listener: GET /metrics in Prometheus text format, on METRICS_PORT, apart from the public API port.

The NetworkPolicy admits only the monitoring namespace to this port; the app adds BLOCKED_CIDRS and, when
set, METRICS_ALLOWED_CIDRS (the scrapers' addresses, which the API's ALLOWED_CIDRS need not include).
"""

from __future__ import annotations

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.access.netrules import NetRules
from app.api.errors import install_error_handlers
from app.api.middleware.network_rules import NetworkRulesMiddleware
from app.observability.metrics import Metrics
from app.settings import Settings


def create_metrics_app(metrics: Metrics, settings: Settings) -> FastAPI:
    """A separate ASGI app, so the Service behind the LoadBalancer (port 18789) never carries /metrics."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    install_error_handlers(app)

    @app.get("/metrics")
    async def scrape() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(NetworkRulesMiddleware, rules=NetRules.for_metrics(settings), metrics=metrics)
    return app
