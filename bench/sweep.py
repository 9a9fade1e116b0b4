"""Concurrency sweep: throughput and p99 latency of /v1/chat/completions as concurrent clients grow, as JSON and a PNG.

    python -m bench.sweep                                   # starts its own server (embedded model, dev mode)
    python -m bench.sweep --url http://HOST:18789 --api-key ck-...   # measures a running deployment
    python -m bench.sweep --concurrency 1,2,4,8 --requests 32 --max-tokens 24

Writes bench/results/sweep.json and bench/results/sweep.png (tokens/s and p99 latency against concurrency).
Every request carries a distinct prompt, so the response cache never answers for the model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import percentile  # noqa: E402
from bench.results_file import RESULTS_DIR  # noqa: E402
from bench.server_process import DEV_KEY, bench_settings, start_server, stop_server, wait_ready  # noqa: E402

DATA_DIR = ROOT / "build" / "bench-data"  # shared with throughput.py: the model is converted once
DEFAULT_LEVELS = (1, 2, 4, 8, 16, 32)
# A sweep is one client hammering on purpose: the limits meant for tenants would cut it off.
SERVER_OVERRIDES = {
    "RATE_LIMIT_PER_KEY": "1000000",
    "RATE_LIMIT_PER_IP": "1000000",
    "ABNORMAL_KEY_PER_MINUTE": "1000000",
    "RATE_LIMIT_TOKENS_PER_KEY": "1000000000",
    "MAX_CONCURRENT_PER_KEY": "100000",
    "CACHE_MAX_ENTRIES": "0",
}


@dataclass(frozen=True)
class Level:
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    requests_per_s: float
    tokens_per_s: float
    completion_tokens: int
    p50_s: float
    p95_s: float
    p99_s: float


def summarize(concurrency: int, latencies: list[float], tokens: int, errors: int, wall_s: float) -> Level:
    if not latencies:
        raise SystemExit(f"every request failed at concurrency {concurrency} ({errors} errors)")
    return Level(
        concurrency=concurrency,
        requests=len(latencies) + errors,
        errors=errors,
        wall_s=round(wall_s, 3),
        requests_per_s=round(len(latencies) / wall_s, 3),
        tokens_per_s=round(tokens / wall_s, 2),
        completion_tokens=tokens,
        p50_s=round(statistics.median(latencies), 4),
        p95_s=round(percentile(latencies, 95), 4),
        p99_s=round(percentile(latencies, 99), 4),
    )


async def run_level(client: httpx.AsyncClient, concurrency: int, total: int, max_tokens: int) -> Level:
    """`total` requests with at most `concurrency` in flight; latency per request, tokens from the usage block."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    latencies: list[float] = []
    tokens = 0
    errors = 0
    run_id = secrets.token_hex(4)

    async def worker() -> None:
        nonlocal tokens, errors
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            body = {
                "messages": [
                    {"role": "user", "content": f"Request {run_id}-{concurrency}-{i}: name a colour and say why."}
                ],
                "max_tokens": max_tokens,
                "temperature": 0,
                "ignore_eos": True,  # every reply is max_tokens long, so levels compare like for like
            }
            started = time.perf_counter()
            try:
                r = await client.post("/v1/chat/completions", json=body)
                r.raise_for_status()
                usage = r.json().get("usage") or {}
            except (httpx.HTTPError, ValueError) as e:
                errors += 1
                print(f"  request {i} at concurrency {concurrency} failed: {e}", file=sys.stderr)
                continue
            latencies.append(time.perf_counter() - started)
            tokens += int(usage.get("completion_tokens", 0))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarize(concurrency, latencies, tokens, errors, time.perf_counter() - started)


async def sweep(url: str, api_key: str, levels: Sequence[int], requests: int, max_tokens: int) -> list[Level]:
    limits = httpx.Limits(max_connections=max(levels) + 4, max_keepalive_connections=max(levels) + 4)
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600, limits=limits) as client:
        await run_level(client, 1, 2, max_tokens)  # warm-up: first-call costs stay out of the first level
        out = []
        for c in levels:
            level = await run_level(client, c, max(requests, c), max_tokens)
            print(
                f"concurrency {c:>3}: {level.tokens_per_s:8.1f} tok/s  {level.requests_per_s:6.2f} req/s  "
                f"p50 {level.p50_s:.2f}s  p99 {level.p99_s:.2f}s  errors {level.errors}"
            )
            out.append(level)
    return out


def plot(levels: Sequence[Level], path: Path, title: str) -> None:
    """Throughput (left axis) and p99 latency (right axis) against concurrency, log2 x axis."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt

    xs = [lv.concurrency for lv in levels]
    fig, left = plt.subplots(figsize=(8, 4.5), dpi=120)
    left.plot(xs, [lv.tokens_per_s for lv in levels], "o-", color="tab:blue", label="throughput (tokens/s)")
    left.set_xscale("log", base=2)
    left.set_xticks(xs, [str(x) for x in xs])
    left.set_xlabel("concurrent clients")
    left.set_ylabel("throughput (generated tokens/s)", color="tab:blue")
    left.set_ylim(bottom=0)
    right = left.twinx()
    right.plot(xs, [lv.p99_s for lv in levels], "s--", color="tab:red", label="p99 latency (s)")
    right.set_ylabel("p99 latency (s)", color="tab:red")
    right.set_ylim(bottom=0)
    left.grid(True, alpha=0.3)
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    left.legend(handles, [str(h.get_label()) for h in handles], loc="upper left")
    left.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


@contextmanager
def local_server(max_batch_size: int, max_tokens: int) -> Iterator[tuple[str, str]]:
    """`python -m app` in development mode on a free port; yields (url, api key) once /readyz answers."""
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    # start_server hands this process's environment to the server.
    os.environ.update(
        {**SERVER_OVERRIDES, "MAX_BATCH_SIZE": str(max_batch_size), "MAX_TOKENS": str(max(max_tokens, 16))}
    )
    settings = bench_settings(DATA_DIR)
    log_path = DATA_DIR / "sweep-server.log"
    proc, url = start_server(settings, log_path)
    try:
        wait_ready(proc, url, log_path, timeout=900)
        yield url, DEV_KEY
    finally:
        stop_server(proc)


def parse_levels(text: str) -> list[int]:
    try:
        levels = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise SystemExit(f"--concurrency must be comma-separated positive integers, got {text!r}") from None
    if not levels or levels[0] < 1:
        raise SystemExit(f"--concurrency must be comma-separated positive integers, got {text!r}")
    return levels


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="a running service; without it the sweep starts one with the embedded model")
    p.add_argument("--api-key", default=os.environ.get("CLAWBOT_API_KEY"), help="API key (default $CLAWBOT_API_KEY)")
    p.add_argument("--concurrency", default=",".join(map(str, DEFAULT_LEVELS)), help="levels, e.g. 1,2,4,8")
    p.add_argument("--requests", type=int, default=32, help="requests per level (at least the concurrency)")
    p.add_argument("--max-tokens", type=int, default=32, help="max_tokens per request")
    p.add_argument("--max-batch-size", type=int, default=32, help="MAX_BATCH_SIZE of a self-started server")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for sweep.json and sweep.png")
    args = p.parse_args(argv)
    levels = parse_levels(args.concurrency)
    if args.requests < 1 or args.max_tokens < 1:
        raise SystemExit(f"--requests and --max-tokens must be at least 1, got {args.requests} and {args.max_tokens}")
    if args.url and not args.api_key:
        raise SystemExit("--url needs --api-key (or CLAWBOT_API_KEY) for the service being measured")

    def measure(url: str, key: str) -> list[Level]:
        return asyncio.run(sweep(url, key, levels, args.requests, args.max_tokens))

    if args.url:
        target = args.url
        results = measure(args.url, args.api_key)
    else:
        with local_server(args.max_batch_size, args.max_tokens) as (url, key):
            target = "self-started (embedded model, development mode)"
            results = measure(url, key)

    report = {
        "benchmark": "concurrency sweep of POST /v1/chat/completions",
        "target": target,
        "max_tokens": args.max_tokens,
        "requests_per_level": args.requests,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "levels": [asdict(lv) for lv in results],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, args.out / "sweep.png", f"ClawBot concurrency sweep (max_tokens={args.max_tokens})")
    print(f"wrote {args.out / 'sweep.json'} and {args.out / 'sweep.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
