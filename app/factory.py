"""The app factory: settings in, a FastAPI app out, with the model loaded in the background by the lifespan.

Shutdown: `begin_draining(app)` (python -m app calls it on SIGTERM) turns /readyz and new chat
requests to 503 at once and gives the engine SHUTDOWN_GRACE_SECONDS minus a margin to finish what
it accepted; whatever is left then gets a 503 with Retry-After (a stream: an error event and
[DONE]) before uvicorn's own graceful timeout would cancel the handlers into 500s.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from app.access.netrules import NetRules
from app.api.auth import RouteGuard, check_route_rules
from app.api.errors import install_error_handlers
from app.api.middleware.network_rules import PROBE_PATHS, NetworkRulesMiddleware
from app.api.middleware.request_log import RequestObserver
from app.api.openapi import install_openapi
from app.api.serving import ChatRunner
from app.inference.loader import output_cap
from app.observability.metrics import Metrics, build_metrics
from app.settings import Settings

log = logging.getLogger("clawbot.app")
WARMUP_MAX_TOKENS = 8
# The engine's drain deadline comes this long before the server's graceful timeout (at most half the grace),
# so requests it cannot finish are answered with a 503 while their handlers still run.
DRAIN_MARGIN_S = 2.0


def engine_drain_s(settings: Settings) -> float:
    return settings.shutdown_grace_s - min(DRAIN_MARGIN_S, settings.shutdown_grace_s / 2)


def _load(settings: Settings, hub_token: str | None) -> Any:
    from app.inference.loader import load_model

    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    return load_model(
        settings.model_path, settings.data_dir, settings.quantization, dtype=settings.dtype, hub_token=hub_token
    )


async def _warm_up(runner: ChatRunner, prompts: tuple[str, ...]) -> None:
    from app.inference.engine import SamplingParams

    for prompt in prompts:
        ids = await runner.render([{"role": "user", "content": prompt}])
        handle = runner.engine.submit(ids, SamplingParams(max_tokens=WARMUP_MAX_TOKENS))
        await handle.result()


async def _bring_up(app: FastAPI, settings: Settings, metrics: Metrics, on_fatal: Callable[[str], None] | None) -> None:
    from app.inference.constraints import Grammars
    from app.inference.engine import Engine
    from app.inference.loader import model_identity
    from app.inference.own_thread import run_in_own_thread

    state = app.state
    try:
        started = time.perf_counter()
        hub_token = state.access.hub_token if state.access is not None else None
        # Loaded in a thread that then exits, so the engine thread is the only one with an OpenMP pool (own_thread).
        loaded = await asyncio.to_thread(run_in_own_thread, _load, settings, hub_token)
        state.model = loaded
        metrics.model_memory_bytes.set(loaded.memory_bytes)
        engine = Engine(
            loaded.model,
            loaded.tokenizer,
            device=loaded.device,
            max_batch_size=settings.max_batch_size,
            batch_wait_ms=settings.batch_wait_ms,
            max_queue=settings.max_queue,
            max_tokens=state.max_tokens,
            context_window=loaded.context_window,
            kv_cache_tokens=settings.kv_cache_tokens,
            prefill_chunk_tokens=settings.prefill_chunk_tokens,
            prefix_cache_tokens=settings.prefix_cache_tokens,
            metrics=metrics,
        )
        await engine.start()
        state.engine = engine
        # The grammar compiler reads the vocabulary off the loop; a copy keeps it from sharing the engine's Rust state.
        grammars = await asyncio.to_thread(
            Grammars,
            copy.deepcopy(loaded.tokenizer),
            loaded.model.config.vocab_size,
            engine.eos_ids,
            compile_timeout_s=settings.grammar_compile_timeout_s,
            workers=settings.grammar_compile_workers,
            cache_bytes=settings.grammar_cache_bytes,
        )
        runner = ChatRunner(
            settings=settings,
            metrics=metrics,
            engine=engine,
            tokenizer=loaded.tokenizer,
            model_name=state.model_name,
            model_identity=await asyncio.to_thread(model_identity, loaded),
            context_window=loaded.context_window,
            storage=state.storage,
            defaults=loaded.sampling_defaults,
            grammars=grammars,
            max_tokens=state.max_tokens,
        )
        state.runner = runner  # closed by the lifespan even if warm-up fails; routes wait for `ready`
        await _warm_up(runner, settings.warmup_prompts)
        state.ready = True
        metrics.model_ready.set(1)
        log.info(
            "model ready",
            extra={
                "model": loaded.name,
                "quantization": loaded.quantization,
                "device": str(loaded.device),
                "memory_bytes": loaded.memory_bytes,
                "startup_s": round(time.perf_counter() - started, 2),
            },
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        state.load_error = f"{type(exc).__name__}: {exc}"
        log.error("model failed to load", extra={"error": state.load_error})
        if on_fatal is not None:
            on_fatal(state.load_error)


def begin_draining(app: FastAPI) -> None:
    """Stop taking work (readiness and new chats answer 503) and start the engine's drain deadline. On the loop."""
    state = app.state
    if not state.draining:
        log.info("draining", extra={"grace_s": state.settings.shutdown_grace_s})
    state.draining = True
    state.ready = False
    state.metrics.model_ready.set(0)
    if state.engine is not None:
        state.engine.drain(engine_drain_s(state.settings))


def create_app(settings: Settings, *, on_fatal: Callable[[str], None] | None = None) -> FastAPI:
    """Build the service. `on_fatal` is called if the model cannot load (the CLI exits non-zero)."""
    metrics = build_metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from app.access.control import AccessControl
        from app.storage.stores import Storage

        state = app.state
        state.storage = await Storage.open(settings, metrics)
        state.access = await AccessControl.create(settings, metrics, state.storage.link)
        bring_up = asyncio.create_task(_bring_up(app, settings, metrics, on_fatal))
        try:
            yield
        finally:
            begin_draining(app)
            bring_up.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await bring_up
            if state.engine is not None:
                # Keeps the earlier deadline SIGTERM set; without one (a test client), drains for the same time.
                await state.engine.shutdown(grace_s=engine_drain_s(settings))
            if state.runner is not None:
                state.runner.close()
            await state.access.close()
            await state.storage.close()
            state.runner = state.engine = state.model = None
            gc.collect()
            log.info("stopped")

    app = FastAPI(
        title="ClawBot",
        version="1.0.0",
        summary="Private quantized-LLM chat service: seed API and OpenAI-compatible API on port 18789.",
        lifespan=lifespan,
        # Every route gets its rule from app.api.auth.ROUTE_RULES, so none can forget its credentials or scope.
        dependencies=[RouteGuard],
        # A slash redirect builds its Location from the client's Host header: a forged Host would be echoed back.
        redirect_slashes=False,
    )
    state = app.state
    state.settings = settings
    state.metrics = metrics
    state.model_name = settings.model_name
    state.max_tokens = output_cap(settings.max_tokens, settings.model_path)  # known before the model loads
    state.started_at = int(time.time())
    state.ready = False
    state.draining = False
    state.load_error = None
    state.model = state.engine = state.runner = state.access = state.storage = None

    install_error_handlers(app)
    from app.api.routes import admin, admin_stats, console, health, openai_api, responses_api, seed_api

    app.include_router(health.router)
    app.include_router(seed_api.router)
    app.include_router(openai_api.router)
    app.include_router(responses_api.router)
    app.include_router(admin.router)
    app.include_router(admin_stats.router)
    app.include_router(console.router)
    check_route_rules(app)
    install_openapi(app)

    from app.api.middleware.body_limit import BodyLimitMiddleware

    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    # Outside the body limit (a refused address's body is never read), inside the observer (refusals are counted).
    app.add_middleware(
        NetworkRulesMiddleware, rules=NetRules.for_api(settings), metrics=metrics, exempt_paths=PROBE_PATHS
    )
    app.add_middleware(RequestObserver, metrics=metrics)
    from app.api.middleware.security_headers import SecurityHeadersMiddleware

    # Outermost, so every response (errors from the inner layers included) carries the browser headers.
    app.add_middleware(SecurityHeadersMiddleware)
    return app
