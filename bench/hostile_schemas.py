"""The others keep their service while one key sends hostile JSON schemas (issue 22), and compiled grammars stay bounded.

    .venv/bin/python bench/hostile_schemas.py                      # default settings of the service
    .venv/bin/python bench/hostile_schemas.py --requests 12 --json out.json

Starts `python -m app` in production mode with two keys, `hostile` and `victim`, and measures in one run:

1. quiet: `victim` sends 16-token requests one after another (`ignore_eos`, so each is exactly 16 tokens) while a
   prober GETs /healthz every 20 ms;
2. under attack: the same, while `hostile` keeps four schemas in flight at all times: each a new schema within every
   limit whose compile overruns GRAMMAR_COMPILE_TIMEOUT_SECONDS (so it is refused only after the whole budget),
   interleaved with the issue's bombs (refused by the limits at once);
3. memory: the RSS of the server and its compile processes before and after 24 distinct schemas of the largest
   enum the limits allow (1,000 values, 32 KB of JSON), each compiled and cached.

Prints /healthz p50/p99 in both phases, the victim's median latency in both and their ratio (the issue's targets:
p99 under 50 ms, ratio under 2) and the memory growth (target: under 150 MB). Writes bench/results/hostile-*.json.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.report import percentile, ratio  # noqa: E402
from bench.results_file import write_results  # noqa: E402
from bench.server_process import free_port, stop_server, wait_ready, write_key_files  # noqa: E402

KEYS = {"hostile": ("chat",), "victim": ("chat", "benchmark")}
HOSTILE_IN_FLIGHT = 4
PROBE_EVERY_S = 0.02
BOMBS: list[dict[str, Any]] = [
    {"type": "string", "pattern": "a" * 200_000},
    {"enum": [f"value-{i}" for i in range(10_000)]},
    {"type": "string", "pattern": "(a{1,100}){1,100}"},
    {"anyOf": [{"type": "object", "properties": {f"k{i}": {"type": "integer"}}} for i in range(2_000)]},
    {"not": {}},
]
_serial = itertools.count()


def slow_schema() -> dict[str, Any]:
    """A new schema within every limit that takes seconds to compile (a counted string length, over the whole vocabulary)."""
    n = next(_serial)
    return {
        "type": "object",
        "properties": {f"field_{n}": {"type": "string", "maxLength": 400 + n % 100}},
        "required": [f"field_{n}"],
    }


def large_enum(i: int) -> dict[str, Any]:
    return {"type": "string", "enum": [f"schema {i:02d} choice {j:04d} padding" for j in range(1_000)]}


def start(root: Path, env_extra: dict[str, str]) -> tuple[subprocess.Popen[bytes], str, dict[str, str], Path]:
    """`python -m app` in production mode with the keys of KEYS."""
    key_env, raw = write_key_files(root / "secrets", KEYS)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    models, cache = data / "models", ROOT / "build" / "test-models"
    cache.mkdir(parents=True, exist_ok=True)
    if not models.exists():
        models.symlink_to(cache, target_is_directory=True)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("APP_", "DEV_"))},
        **key_env,
        "DATA_DIR": str(data),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "METRICS_PORT": str(free_port()),
        "PYTHONUNBUFFERED": "1",
        "RATE_LIMIT_PER_KEY": "1000000",
        "RATE_LIMIT_TOKENS_PER_KEY": "100000000",
        **env_extra,
    }
    log = root / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "app"], cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    return proc, f"http://127.0.0.1:{port}", raw, log


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and every process below it (the fork server and the compile processes), in MB."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
        stack.extend(children.get(p, []))
    return total / 1024


class Prober(threading.Thread):
    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.url, self.errors, self.stop = url, 0, threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self.stop.is_set():
                started = time.perf_counter()
                if c.get("/healthz").status_code != 200:
                    self.errors += 1
                self.samples.append(time.perf_counter() - started)
                time.sleep(PROBE_EVERY_S)


def victim_latencies(url: str, key: str, requests: int) -> list[float]:
    body = {"messages": [{"role": "user", "content": "Tell me about the sea."}], "max_tokens": 16, "ignore_eos": True}
    out = []
    with httpx.Client(base_url=url, timeout=300, headers={"Authorization": f"Bearer {key}"}) as c:
        for _ in range(requests):
            started = time.perf_counter()
            r = c.post("/v1/chat/completions", json=body)
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 16, r.text
            out.append(time.perf_counter() - started)
    return out


def phase(url: str, victim: str, requests: int, hostile: str | None) -> dict[str, Any]:
    prober, stop = Prober(url), threading.Event()
    outcomes: dict[str, int] = {}
    lock = threading.Lock()

    def attacker() -> None:
        with httpx.Client(base_url=url, timeout=300, headers={"Authorization": f"Bearer {hostile}"}) as c:
            for i in itertools.count():
                if stop.is_set():
                    return
                schema = BOMBS[i % len(BOMBS)] if i % 3 == 2 else slow_schema()
                r = c.post(
                    "/v1/chat/completions",
                    json={
                        "messages": [{"role": "user", "content": "x"}],
                        "max_tokens": 4,
                        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
                    },
                )
                code = r.json().get("error", {}).get("code", "ok") if r.status_code != 200 else "ok"
                with lock:
                    outcomes[f"{r.status_code} {code}"] = outcomes.get(f"{r.status_code} {code}", 0) + 1

    attackers = [threading.Thread(target=attacker, daemon=True) for _ in range(HOSTILE_IN_FLIGHT if hostile else 0)]
    prober.start()
    for a in attackers:
        a.start()
    if attackers:
        time.sleep(2.0)  # let the four compiles get going before the victim's first request
    latencies = victim_latencies(url, victim, requests)
    stop.set()
    prober.stop.set()
    prober.join()
    for a in attackers:
        a.join(120)
    probes = prober.samples
    return {
        "victim_median_s": statistics.median(latencies),
        "victim_latencies_s": latencies,
        "healthz_p50_ms": percentile(probes, 50) * 1000,
        "healthz_p99_ms": percentile(probes, 99) * 1000,
        "healthz_max_ms": max(probes) * 1000,
        "healthz_probes": len(probes),
        "healthz_errors": prober.errors,
        "hostile_outcomes": outcomes,
    }


def memory(url: str, key: str, pid: int) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=300, headers={"Authorization": f"Bearer {key}"}) as c:

        def ask(schema: dict[str, Any]) -> None:
            r = c.post(
                "/v1/chat/completions",
                json={
                    "messages": [{"role": "user", "content": "Pick one."}],
                    "max_tokens": 4,
                    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
                },
            )
            assert r.status_code == 200, r.text

        ask({"type": "string", "enum": ["warm", "up"]})  # the compile processes are started
        before = tree_rss_mb(pid)
        for i in range(24):
            ask(large_enum(i))
        after = tree_rss_mb(pid)
    return {"rss_before_mb": before, "rss_after_mb": after, "growth_mb": after - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=8, help="victim requests per phase")
    parser.add_argument("--root", type=Path, default=ROOT / "build" / "bench-hostile")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    proc, url, keys, log = start(args.root, {})
    try:
        wait_ready(proc, url, log)
        victim_latencies(url, keys["victim"], 2)  # warm: the first requests pay for one-off setup
        quiet = phase(url, keys["victim"], args.requests, None)
        attacked = phase(url, keys["victim"], args.requests, keys["hostile"])
        mem = memory(url, keys["victim"], proc.pid)
    finally:
        stop_server(proc)
    results = {
        "quiet": quiet,
        "attacked": attacked,
        "memory": mem,
        "victim_latency_ratio": ratio(attacked["victim_median_s"], quiet["victim_median_s"]),
    }
    print(f"{'':28}{'quiet':>12}{'4 hostile schemas':>20}")
    print(f"{'/healthz p50 (ms)':28}{quiet['healthz_p50_ms']:>12.1f}{attacked['healthz_p50_ms']:>20.1f}")
    print(f"{'/healthz p99 (ms)':28}{quiet['healthz_p99_ms']:>12.1f}{attacked['healthz_p99_ms']:>20.1f}   target < 50")
    print(
        f"{'/healthz probes, errors':28}{quiet['healthz_probes']:>9}, {quiet['healthz_errors']}"
        f"{attacked['healthz_probes']:>17}, {attacked['healthz_errors']}"
    )
    print(
        f"{'victim 16 tokens, median (s)':28}{quiet['victim_median_s']:>12.2f}{attacked['victim_median_s']:>20.2f}"
        f"   ratio {results['victim_latency_ratio']:.2f} (target < 2)"
    )
    print(f"hostile requests answered: {attacked['hostile_outcomes']}")
    print(
        f"RSS, server and compile processes: {mem['rss_before_mb']:.0f} MB -> {mem['rss_after_mb']:.0f} MB after 24 "
        f"distinct large enums (+{mem['growth_mb']:.0f} MB; target < 150)"
    )
    write_results("hostile", results, args.json)


if __name__ == "__main__":
    main()
