"""Throughput benchmark: raw `model.generate` on one padded batch vs the served engine, measured side by side in one run.

    .venv/bin/python bench/throughput.py                 # raw vs the HTTP server (32 clients, one-at-a-time, TTFT)
    .venv/bin/python bench/throughput.py --engine-only   # raw vs the Engine in-process (continuous and static)

Every figure comes from the same process, model and machine in one run, so the ratios are
meaningful even when absolute tokens/s move with the load on the host. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import torch  # noqa: E402

from app.inference.own_thread import run_in_own_thread  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench.raw_generate import messages_for, raw_generate  # noqa: E402
from bench.report import percentile  # noqa: E402
from bench.results_file import write_results  # noqa: E402
from bench.server_process import DEV_KEY, bench_settings, start_server, stop_server, wait_ready  # noqa: E402


def render(tokenizer: Any, i: int) -> list[int]:
    encoded = tokenizer.apply_chat_template(
        messages_for(i), add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(encoded["input_ids"])


# -- the Engine in-process ---------------------------------------------------------------------------
async def engine_run(
    loaded: Any,
    settings: Settings,
    prompts: list[list[int]],
    max_tokens: list[int],
    *,
    continuous: bool,
    concurrency: int,
) -> dict[str, Any]:
    from app.inference.engine import Engine, SamplingParams
    from app.inference.loader import output_cap

    engine = Engine(
        loaded.model,
        loaded.tokenizer,
        device=loaded.device,
        max_batch_size=settings.max_batch_size,
        batch_wait_ms=settings.batch_wait_ms,
        max_queue=max(settings.max_queue, len(prompts)),
        max_tokens=output_cap(settings.max_tokens, settings.model_path),
        context_window=loaded.context_window,
        kv_cache_tokens=settings.kv_cache_tokens,
        prefill_chunk_tokens=settings.prefill_chunk_tokens,
        continuous=continuous,
    )
    await engine.start()
    await engine.submit(prompts[0], SamplingParams(max_tokens=2)).result()  # warm-up
    gate = asyncio.Semaphore(concurrency)

    async def one(prompt: list[int], n: int) -> tuple[int, float, float]:
        async with gate:
            started = time.perf_counter()
            handle = engine.submit(prompt, SamplingParams(max_tokens=n, ignore_eos=True))
            result = await handle.result()
            return result.completion_tokens, result.time_to_first_token_s or 0.0, time.perf_counter() - started

    started = time.perf_counter()
    rows = await asyncio.gather(*(one(p, n) for p, n in zip(prompts, max_tokens)))
    elapsed = time.perf_counter() - started
    await engine.shutdown()
    tokens = sum(r[0] for r in rows)
    return {
        "tokens": tokens,
        "seconds": elapsed,
        "tok_s": tokens / elapsed,
        "ttft_p50_s": percentile([r[1] for r in rows], 50),
        "latency_p50_s": percentile([r[2] for r in rows], 50),
    }


def body(i: int, max_tokens: int, *, stream: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": "clawbot",
        "messages": messages_for(i),
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    if stream:
        payload.update(stream=True, stream_options={"include_usage": True})
    return payload


async def post_once(client: httpx.AsyncClient, i: int, max_tokens: int) -> int:
    r = await client.post("/v1/chat/completions", json=body(i, max_tokens, stream=False))
    if r.status_code != 200:
        raise SystemExit(f"POST /v1/chat/completions answered {r.status_code}: {r.text[:500]}")
    return int(r.json()["usage"]["completion_tokens"])


async def stream_once(client: httpx.AsyncClient, i: int, max_tokens: int) -> tuple[int, float]:
    """(completion tokens from the usage chunk, seconds to the first content chunk)."""
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    async with client.stream("POST", "/v1/chat/completions", json=body(i, max_tokens, stream=True)) as r:
        if r.status_code != 200:
            raise SystemExit(f"streaming POST answered {r.status_code}: {(await r.aread())[:500]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                first = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
    return tokens, first if first is not None else float("nan")


async def served(url: str, concurrency: int, requests: int, baseline_requests: int, max_tokens: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {DEV_KEY}"}
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=900, limits=limits) as client:
        await post_once(client, 0, 4)  # warm-up: first-request paths (auth, template, engine) out of the timing
        gate = asyncio.Semaphore(concurrency)

        async def gated(coro: Any) -> Any:
            async with gate:
                return await coro

        started = time.perf_counter()
        counts = await asyncio.gather(*(gated(post_once(client, i, max_tokens)) for i in range(requests)))
        load_s = time.perf_counter() - started

        started = time.perf_counter()
        streamed = await asyncio.gather(*(gated(stream_once(client, i, max_tokens)) for i in range(requests)))
        stream_s = time.perf_counter() - started
        ttfts = [t for _, t in streamed]

        started = time.perf_counter()
        sequential = [await post_once(client, i, max_tokens) for i in range(baseline_requests)]
        seq_s = time.perf_counter() - started
    return {
        "concurrent": {"tokens": sum(counts), "seconds": load_s, "tok_s": sum(counts) / load_s},
        "streaming": {
            "tokens": sum(n for n, _ in streamed),
            "seconds": stream_s,
            "tok_s": sum(n for n, _ in streamed) / stream_s,
            "ttft_p50_s": percentile(ttfts, 50),
            "ttft_p99_s": percentile(ttfts, 99),
        },
        "one_at_a_time": {"tokens": sum(sequential), "seconds": seq_s, "tok_s": sum(sequential) / seq_s},
    }


# -- main ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients (and the raw batch size)")
    parser.add_argument(
        "--requests", type=int, default=None, help="requests in the concurrent run (default: --concurrency)"
    )
    parser.add_argument(
        "--baseline-requests",
        type=int,
        default=4,
        help="sequential requests for the one-at-a-time baseline (tok/s does not depend on the count)",
    )
    parser.add_argument("--max-tokens", type=int, default=48, help="new tokens per request (forced with ignore_eos)")
    parser.add_argument("--engine-only", action="store_true", help="measure the Engine in-process instead of over HTTP")
    parser.add_argument(
        "--compare-static",
        action="store_true",
        help="with --engine-only: also run a mixed-length workload through continuous and static batching",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=ROOT / "build" / "bench-data", help="DATA_DIR (model converted once)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    requests = args.requests or args.concurrency
    for name in ("concurrency", "max_tokens", "baseline_requests"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")

    settings = bench_settings(args.data_dir)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    print(f"loading {settings.model_path} (QUANTIZATION={settings.quantization}) into {args.data_dir} ...", flush=True)
    from app.factory import _load

    loaded = run_in_own_thread(_load, settings, None)  # exactly as the server loads it
    results: dict[str, Any] = {
        "model": settings.model_path,
        "quantization": settings.quantization,
        "device": str(loaded.device),
        "torch_threads": torch.get_num_threads(),
        "concurrency": args.concurrency,
        "requests": requests,
        "max_tokens": args.max_tokens,
        "max_batch_size": settings.max_batch_size,
        "batch_wait_ms": settings.batch_wait_ms,
    }

    print(f"raw model.generate: one batch of {args.concurrency} x {args.max_tokens} new tokens ...", flush=True)
    results["raw_generate"] = raw = run_in_own_thread(raw_generate, loaded, args.concurrency, args.max_tokens)
    print(f"  {raw['tok_s']:.1f} tok/s ({raw['tokens']} tokens in {raw['seconds']:.1f}s)", flush=True)

    if args.engine_only:
        prompts = [render(loaded.tokenizer, i) for i in range(requests)]
        cont = asyncio.run(
            engine_run(
                loaded, settings, prompts, [args.max_tokens] * requests, continuous=True, concurrency=args.concurrency
            )
        )
        results["engine_continuous"] = cont
        print(
            f"engine (continuous), {args.concurrency} concurrent: {cont['tok_s']:.1f} tok/s, "
            f"TTFT p50 {cont['ttft_p50_s']:.2f}s",
            flush=True,
        )
        one = asyncio.run(
            engine_run(
                loaded,
                settings,
                prompts[: args.baseline_requests],
                [args.max_tokens] * args.baseline_requests,
                continuous=True,
                concurrency=1,
            )
        )
        results["engine_one_at_a_time"] = one
        print(f"engine, one request at a time: {one['tok_s']:.1f} tok/s", flush=True)
        results["ratios"] = {
            "engine_over_raw": cont["tok_s"] / raw["tok_s"],
            "engine_over_one_at_a_time": cont["tok_s"] / one["tok_s"],
        }
        if args.compare_static:
            # Mixed lengths are where the two schedulers differ: static batching holds freed rows empty
            # until its longest request is done; continuous batching refills them at the next step.
            n = 2 * requests
            mixed = [render(loaded.tokenizer, i) for i in range(n)]
            lengths = [(16, args.max_tokens, 2 * args.max_tokens)[i % 3] for i in range(n)]
            for mode, flag in (("mixed_continuous", True), ("mixed_static", False)):
                r = asyncio.run(engine_run(loaded, settings, mixed, lengths, continuous=flag, concurrency=n))
                results[mode] = r
                print(
                    f"{mode}: {n} requests of 16/{args.max_tokens}/{2 * args.max_tokens} tokens: {r['tok_s']:.1f} tok/s, "
                    f"median latency {r['latency_p50_s']:.1f}s",
                    flush=True,
                )
            results["ratios"]["continuous_over_static_mixed"] = (
                results["mixed_continuous"]["tok_s"] / results["mixed_static"]["tok_s"]
            )
    else:
        del loaded
        gc.collect()  # the server loads its own copy; ours must not hold memory or threads meanwhile
        log_path = args.data_dir / "bench-server.log"
        proc, url = start_server(settings, log_path)
        try:
            print(f"starting the server at {url} (log: {log_path}) ...", flush=True)
            wait_ready(proc, url, log_path)
            s = asyncio.run(served(url, args.concurrency, requests, args.baseline_requests, args.max_tokens))
        finally:
            stop_server(proc)
        results.update(served=s["concurrent"], served_streaming=s["streaming"], one_at_a_time=s["one_at_a_time"])
        results["ratios"] = {
            "served_over_raw": s["concurrent"]["tok_s"] / raw["tok_s"],
            "served_over_one_at_a_time": s["concurrent"]["tok_s"] / s["one_at_a_time"]["tok_s"],
        }
        print(f"served, {args.concurrency} concurrent HTTP clients: {s['concurrent']['tok_s']:.1f} tok/s", flush=True)
        print(f"served, one request at a time: {s['one_at_a_time']['tok_s']:.1f} tok/s", flush=True)
        print(
            f"time to first token under load (streaming): p50 {s['streaming']['ttft_p50_s']:.2f}s, "
            f"p99 {s['streaming']['ttft_p99_s']:.2f}s ({s['streaming']['tok_s']:.1f} tok/s)",
            flush=True,
        )

    print("ratios: " + ", ".join(f"{k} = {v:.2f}" for k, v in results["ratios"].items()), flush=True)
    write_results(f"throughput-{'engine' if args.engine_only else 'served'}", results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
