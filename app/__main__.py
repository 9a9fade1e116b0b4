"""`python -m app`: serve the chat service with settings from the environment (one worker per pod, by design)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Iterator

import uvicorn
from fastapi import FastAPI

from app.observability.logs import configure_logging
from app.api.metrics_app import create_metrics_app
from app.factory import begin_draining, create_app
from app.settings import SettingsError, load_settings


class _Server(uvicorn.Server):
    """uvicorn's server, plus: SIGTERM starts the app's drain at once, and the signal is not re-raised afterwards.

    uvicorn only stops accepting connections on SIGTERM; `begin_draining` also turns /readyz to 503 and
    starts the engine's deadline, so requests it cannot finish are answered (503) before uvicorn's
    graceful timeout would cancel them. uvicorn re-raises SIGTERM once it has drained, so the process
    would die "by signal" (143) and the status main() returns (0 after a clean drain, 1 after a failed
    model load) would be lost.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.chat_app = app
        self.serving_loop: asyncio.AbstractEventLoop | None = None

    def handle_exit(self, sig: int, frame: object) -> None:
        super().handle_exit(sig, frame)  # type: ignore[arg-type]
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()
        if self.serving_loop is not None:
            # A signal handler must not take the engine's lock (the interrupted code may hold it): hop to the loop.
            self.serving_loop.call_soon_threadsafe(begin_draining, self.chat_app)


class _SideServer(uvicorn.Server):
    """A second listener in the same event loop (the metrics port): the main server owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve(main_server: _Server, metrics_server: uvicorn.Server) -> None:
    main_server.serving_loop = asyncio.get_running_loop()
    side = asyncio.create_task(metrics_server.serve(), name="metrics-listener")
    try:
        await main_server.serve()
    finally:
        metrics_server.should_exit = True
        await side


def main() -> int:
    configure_logging(os.environ.get("LOG_LEVEL", "INFO"))
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"clawbot: configuration error: {exc}", file=sys.stderr)
        return 2
    fatal: list[str] = []

    def on_fatal(reason: str) -> None:
        fatal.append(reason)
        os.kill(os.getpid(), signal.SIGTERM)

    app = create_app(settings, on_fatal=on_fatal)
    if settings.development:
        host = "127.0.0.1" if settings.host == "0.0.0.0" else settings.host
        print(
            f"clawbot: serving on http://{host}:{settings.port} (model loads in the background; GET /readyz says when).\n"
            f"  curl -s http://{host}:{settings.port}/api/auth -H 'Content-Type: application/json' -d '{{\"api_key\": \"'$KEY'\"}}'\n"
            f"  curl -s http://{host}:{settings.port}/v1/chat/completions -H \"Authorization: Bearer $KEY\" "
            f"-H 'Content-Type: application/json' -d '{{\"messages\": [{{\"role\": \"user\", \"content\": \"What is the capital of France?\"}}]}}'",
            flush=True,
        )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        log_config=None,
        access_log=False,
        proxy_headers=False,  # X-Forwarded-For is honoured only from TRUSTED_PROXIES, by app.access.netrules
        server_header=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )
    metrics_config = uvicorn.Config(
        create_metrics_app(app.state.metrics), host=settings.host, port=settings.metrics_port, workers=1,
        log_config=None, access_log=False, server_header=False, lifespan="off",
    )
    asyncio.run(_serve(_Server(config, app), _SideServer(metrics_config)))
    if fatal:
        logging.getLogger("clawbot").error("exiting: model failed to load", extra={"error": fatal[0]})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
