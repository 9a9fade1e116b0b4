"""The app factory: settings in, a FastAPI app out, with the model loaded in the background by the lifespan."""
from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI

from app.api.serving import ChatRunner
from app.api.errors import install_error_handlers
from app.observability.metrics import Metrics, build_metrics
from app.api.middleware.request_log import RequestObserver
from app.settings import Settings

log = logging.getLogger("clawbot.app")
WARMUP_MAX_TOKENS = 8


def _load(settings: Settings, hub_token: str | None) -> Any:
    from app.inference.loader import load_model

    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    return load_model(settings.model_path, settings.data_dir, settings.quantization, hub_token=hub_token)


async def _warm_up(runner: ChatRunner, prompts: tuple[str, ...]) -> None:
    from app.inference.engine import SamplingParams

    for prompt in prompts:
        ids = runner.render([{"role": "user", "content": prompt}])
        handle = runner.engine.submit(ids, SamplingParams(max_tokens=WARMUP_MAX_TOKENS))
        await handle.result()


async def _bring_up(app: FastAPI, settings: Settings, metrics: Metrics, on_fatal: Callable[[str], None] | None) -> None:
    from app.inference.constraints import Grammars
    from app.inference.engine import Engine

    state = app.state
    try:
        started = time.perf_counter()
        hub_token = state.access.hub_token if state.access is not None else None
        loaded = await asyncio.to_thread(_load, settings, hub_token)
        state.model = loaded
        metrics.model_memory_bytes.set(loaded.memory_bytes)
        engine = Engine(
            loaded.model,
            loaded.tokenizer,
            device=loaded.device,
            max_batch_size=settings.max_batch_size,
            batch_wait_ms=settings.batch_wait_ms,
            max_queue=settings.max_queue,
            max_tokens=settings.max_tokens,
            context_window=loaded.context_window,
            metrics=metrics,
        )
        await engine.start()
        state.engine = engine
        # The engine thread decodes with its tokenizer; a copy keeps encode and decode from sharing Rust state.
        tokenizer = copy.deepcopy(loaded.tokenizer)
        grammars = await asyncio.to_thread(Grammars, tokenizer, loaded.model.config.vocab_size, engine.eos_ids)
        runner = ChatRunner(
            settings=settings,
            metrics=metrics,
            engine=engine,
            tokenizer=tokenizer,
            model_name=state.model_name,
            context_window=loaded.context_window,
            storage=state.storage,
            defaults=loaded.sampling_defaults,
            grammars=grammars,
        )
        await _warm_up(runner, settings.warmup_prompts)
        state.runner = runner
        state.ready = True
        metrics.model_ready.set(1)
        log.info(
            "model ready",
            extra={"model": loaded.name, "quantization": loaded.quantization, "device": str(loaded.device),
                   "memory_bytes": loaded.memory_bytes, "startup_s": round(time.perf_counter() - started, 2)},
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - any load failure must surface as not-ready plus a clear log line
        state.load_error = f"{type(exc).__name__}: {exc}"
        log.error("model failed to load", extra={"error": state.load_error})
        if on_fatal is not None:
            on_fatal(state.load_error)


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
            state.draining = True
            state.ready = False
            metrics.model_ready.set(0)
            bring_up.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await bring_up
            if state.engine is not None:
                await state.engine.shutdown(grace_s=settings.shutdown_grace_s)
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
    )
    state = app.state
    state.settings = settings
    state.metrics = metrics
    state.model_name = settings.model_name
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

    from app.api.middleware.body_limit import BodyLimitMiddleware

    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestObserver, metrics=metrics)
    from app.api.middleware.security_headers import SecurityHeadersMiddleware

    # Outermost, so every response (errors from the inner layers included) carries the browser headers.
    app.add_middleware(SecurityHeadersMiddleware)
    return app
