"""`python -m app`: serve the chat service with settings from the environment (one worker per pod, by design)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from app.api.metrics_app import create_metrics_app
from app.factory import begin_draining, create_app
from app.observability.logs import configure_logging
from app.settings import Settings, SettingsError, load_settings

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!MD5:!DSS"


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


def _file_version(*paths: Path) -> tuple[tuple[int, int, int], ...]:
    """What changes when a file is replaced: the kubelet swaps a Secret volume's files in by symlink."""
    out = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            return ()
        out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


async def _reload_certificate(context: ssl.SSLContext, cert: Path, key: Path, every_s: float) -> None:
    """Load a renewed certificate into the live context: new handshakes present it, open connections keep theirs."""
    log = logging.getLogger("clawbot")
    seen = _file_version(cert, key)
    while True:
        await asyncio.sleep(every_s)
        now = _file_version(cert, key)
        if not now or now == seen:
            continue
        try:
            context.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:  # a half-written pair: keep serving the old one, try again next time
            log.warning("TLS certificate reload failed; keeping the current one", extra={"error": str(exc)})
            continue
        seen = now
        log.info("TLS certificate reloaded", extra={"cert_file": str(cert)})


async def _serve(
    main_server: _Server, metrics_server: uvicorn.Server, reload: asyncio.Future[None] | None = None
) -> None:
    main_server.serving_loop = asyncio.get_running_loop()
    side = asyncio.create_task(metrics_server.serve(), name="metrics-listener")
    try:
        await main_server.serve()
    finally:
        metrics_server.should_exit = True
        await side
        if reload is not None:
            reload.cancel()


async def _run(settings: Settings, config: uvicorn.Config, metrics_config: uvicorn.Config, app: FastAPI) -> None:
    reload = None
    if settings.tls_cert_file and settings.tls_key_file:
        config.load()  # builds config.ssl, the context the listener serves with
        assert config.ssl is not None
        config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        reload = asyncio.ensure_future(
            _reload_certificate(config.ssl, settings.tls_cert_file, settings.tls_key_file, settings.tls_reload_s)
        )
    await _serve(_Server(config, app), _SideServer(metrics_config), reload)


def metrics_listener_config(settings: Settings, app: FastAPI) -> uvicorn.Config:
    """The metrics listener: plain HTTP (only the monitoring namespace reaches it, inside the cluster), and no proxy
    headers: no proxy stands in front of it, so its network rules judge the TCP peer and nothing a client wrote.
    (uvicorn would otherwise rewrite the peer from X-Forwarded-For for any address in FORWARDED_ALLOW_IPS.)"""
    return uvicorn.Config(
        create_metrics_app(app.state.metrics, settings),
        host=settings.host,
        port=settings.metrics_port,
        workers=1,
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="off",
        proxy_headers=False,
    )


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
    scheme = "https" if settings.tls_cert_file else "http"
    if settings.development:
        host = "127.0.0.1" if settings.host == "0.0.0.0" else settings.host
        print(
            f"clawbot: serving on {scheme}://{host}:{settings.port} (model loads in the background; GET /readyz says when).\n"
            f"  curl -s {scheme}://{host}:{settings.port}/api/auth -H 'Content-Type: application/json' -d '{{\"api_key\": \"'$KEY'\"}}'\n"
            f"  curl -s {scheme}://{host}:{settings.port}/v1/chat/completions -H \"Authorization: Bearer $KEY\" "
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
        ssl_certfile=str(settings.tls_cert_file) if settings.tls_cert_file else None,
        ssl_keyfile=str(settings.tls_key_file) if settings.tls_key_file else None,
        ssl_ciphers=TLS12_CIPHERS,  # uvicorn's default ("TLSv1") leaves TLS 1.2 without AEAD suites
    )
    asyncio.run(_run(settings, config, metrics_listener_config(settings, app), app))
    if fatal:
        logging.getLogger("clawbot").error("exiting: model failed to load", extra={"error": fatal[0]})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
