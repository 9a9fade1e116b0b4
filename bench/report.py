"""Arithmetic and tables for the benchmarks: percentiles, ratios, bytes per token and the bandwidth ceiling.

Pure functions over plain numbers, so tests/bench can check them on canned figures without a model or a server.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

GB = 1e9
# Issue 19's targets, ClawBot / llama-server on the same GGUF (the aim for one stream is 1.0).
ONE_STREAM_TARGET = 0.8
BATCH_TARGET = 2.0
BYTES_TARGET = 1.1
MEMORY_TARGET = 1.3  # resident model memory / the GGUF file's size


def percentile(values: list[float], p: float) -> float:
    """Linear-interpolated percentile (numpy's default); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either side was not measured (or the denominator is 0)."""
    if numerator is None or denominator is None or denominator == 0 or math.isnan(numerator) or math.isnan(denominator):
        return None
    return numerator / denominator


def ceiling_tok_s(bandwidth_gb_s: float, bytes_per_token: int) -> float:
    """Batch-1 decode reads every weight once per token, so memory bandwidth caps one stream at bandwidth / bytes."""
    return bandwidth_gb_s * GB / bytes_per_token


def ms_per_token(tok_s: float) -> float:
    return 1000.0 / tok_s if tok_s > 0 else float("nan")


@dataclass(frozen=True)
class Row:
    label: str
    clawbot: str
    llama: str
    ratio: str  # ClawBot/llama, or the row's own ratio named in the label
    target: str  # the target and whether this run meets it


def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:{spec}}{unit}"


def _target(value: float | None, op: str, bound: float) -> str:
    if value is None:
        return f"{op} {bound:g}"
    met = value >= bound if op == ">=" else value <= bound
    return f"{op} {bound:g} {'met' if met else 'NOT met'}"


def _one_stream(side: dict[str, Any] | None) -> str:
    tok_s = _get(side or {}, "one_at_a_time", "tok_s")
    return "—" if tok_s is None else f"{tok_s:.1f} ({ms_per_token(tok_s):.1f} ms/token)"


def _p50_p99(side: dict[str, Any] | None) -> str:
    conv = _get(side or {}, "conversations")
    if conv is None:
        return "—"
    return f"{conv['ttft_p50_s']:.2f} / {conv['ttft_p99_s']:.2f} s, {conv['errors']} errors"


def rounds_key(key: str) -> str:
    """Where a repeated scenario's rounds are kept beside its median round (results[side][key])."""
    return f"{key}_rounds"


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median tok/s (the lower middle of an even count)."""
    ordered = sorted(rounds, key=lambda figures: figures["tok_s"])
    return ordered[(len(ordered) - 1) // 2]


def round_ratios(c: dict[str, Any], ll: dict[str, Any], key: str) -> list[float]:
    """ClawBot / llama-server tok/s of each round both sides ran (round i of one beside round i of the other)."""
    pairs = zip(c.get(rounds_key(key)) or [], ll.get(rounds_key(key)) or [], strict=False)
    return [a["tok_s"] / b["tok_s"] for a, b in pairs if b["tok_s"] > 0]


def _paired(c: dict[str, Any], ll: dict[str, Any], key: str) -> tuple[float | None, str]:
    """The median of the rounds' ratios and, for several rounds, their range; a run without rounds, the one ratio."""
    ratios = round_ratios(c, ll, key)
    if not ratios:
        return ratio(_get(c, key, "tok_s"), _get(ll, key, "tok_s")), ""
    spread = f" (rounds {min(ratios):.2f}–{max(ratios):.2f}, median of {len(ratios)})" if len(ratios) > 1 else ""
    return percentile(ratios, 50), spread


def build_rows(results: dict[str, Any]) -> list[Row]:
    """The issue's table from a peer run's results (scenarios that did not run show —).

    A scenario run in several rounds (`--rounds`) shows each side's median round and the median of the rounds'
    ratios, with their range: one ratio from one pair of bursts is at the mercy of the machine's neighbours.
    """
    c, ll = results.get("clawbot", {}), results.get("llama", {})
    rows: list[Row] = []
    one, spread = _paired(c, ll, "one_at_a_time")
    rows.append(
        Row(
            "one request at a time, tok/s",
            _one_stream(c),
            _one_stream(ll),
            _fmt(one, ".2f") + spread,
            _target(one, ">=", ONE_STREAM_TARGET),
        )
    )
    batch, spread = _paired(c, ll, "concurrent")
    n, tokens = results.get("concurrency", 32), results.get("max_tokens", 48)
    rows.append(
        Row(
            f"{n} clients, tok/s ({tokens} tokens each)",
            _fmt(_get(c, "concurrent", "tok_s"), ".1f"),
            _fmt(_get(ll, "concurrent", "tok_s"), ".1f"),
            _fmt(batch, ".2f") + spread,
            _target(batch, ">=", BATCH_TARGET),
        )
    )
    raw = ratio(_get(c, "concurrent", "tok_s"), _get(c, "raw_generate", "tok_s"))
    rows.append(
        Row(
            f"{n} clients: ClawBot / raw model.generate (raw tok/s in the ClawBot column)",
            _fmt(_get(c, "raw_generate", "tok_s"), ".1f"),
            "",
            _fmt(raw, ".2f"),
            _target(raw, ">=", 0.85),
        )
    )
    ttft = ratio(_get(c, "streaming", "ttft_p50_s"), _get(ll, "streaming", "ttft_p50_s"))
    rows.append(
        Row(
            f"{n} streaming clients, TTFT p50 (llama prompt cache off)",
            _fmt(_get(c, "streaming", "ttft_p50_s"), ".2f", " s"),
            _fmt(_get(ll, "streaming", "ttft_p50_s"), ".2f", " s"),
            _fmt(ttft, ".2f"),
            "",
        )
    )
    conv_n = _get(c, "conversations", "n") or _get(ll, "conversations", "n") or 200
    p99 = ratio(_get(c, "conversations", "ttft_p99_s"), _get(ll, "conversations", "ttft_p99_s"))
    errors = _get(c, "conversations", "errors")
    conv_target = _target(p99, "<=", 1.0) + ("" if errors in (None, 0) else f"; {errors} errors (target 0)")
    rows.append(
        Row(
            f"{conv_n} streaming conversations, TTFT p50 / p99 (llama prompt cache off)",
            _p50_p99(c),
            _p50_p99(ll),
            _fmt(p99, ".2f") + (" (p99)" if p99 is not None else ""),
            conv_target,
        )
    )
    rows.extend(_prefix_rows(c, ll))
    rows.extend(_bandwidth_rows(results))
    return rows


def _prefix_rows(c: dict[str, Any], ll: dict[str, Any]) -> list[Row]:
    def cell(side: dict[str, Any]) -> str:
        p = side.get("prefix")
        if p is None:
            return "—"
        cached = p.get("cached_tokens")
        shown = "not reported" if cached is None else str(cached)
        return f"{p['uncached_ttft_s']:.3f} s -> {p['cached_ttft_s']:.3f} s (cached_tokens: {shown})"

    if c.get("prefix") is None and ll.get("prefix") is None:
        return []
    tokens = (c.get("prefix") or ll.get("prefix") or {}).get("prefix_tokens", 2000)
    own = ratio(_get(c, "prefix", "cached_ttft_s"), _get(c, "prefix", "uncached_ttft_s"))
    return [
        Row(
            f"shared {tokens}-token prefix: TTFT uncached -> cached (ratio: ClawBot cached/uncached; llama cache on)",
            cell(c),
            cell(ll),
            _fmt(own, ".2f"),
            _target(own, "<=", 0.2),
        )
    ]


def _bandwidth_rows(results: dict[str, Any]) -> list[Row]:
    bandwidth = results.get("bandwidth_gb_s")
    c, ll = results.get("clawbot", {}), results.get("llama", {})
    c_bytes, l_bytes = c.get("bytes_per_token"), ll.get("bytes_per_token")
    if c_bytes is None and l_bytes is None:
        return []
    bytes_ratio = ratio(c_bytes, l_bytes)
    rows = [
        Row(
            "bytes read per token (weights)",
            _fmt(c_bytes and c_bytes / 1e6, ".1f", " MB"),
            _fmt(l_bytes and l_bytes / 1e6, ".1f", " MB"),
            _fmt(bytes_ratio, ".2f"),
            _target(bytes_ratio, "<=", BYTES_TARGET) if bytes_ratio is not None else "",
        )
    ]
    memory, file_size = c.get("memory_bytes"), results.get("gguf_file_bytes")
    if memory and file_size:
        share = ratio(memory, file_size)
        rows.append(
            Row(
                "resident model memory (ClawBot) / GGUF file size (llama column)",
                f"{memory / 1e6:.1f} MB",
                f"{file_size / 1e6:.1f} MB",
                _fmt(share, ".2f"),
                _target(share, "<=", MEMORY_TARGET),
            )
        )
    if bandwidth:
        c_ceil = ceiling_tok_s(bandwidth, c_bytes) if c_bytes else None
        l_ceil = ceiling_tok_s(bandwidth, l_bytes) if l_bytes else None
        rows.append(
            Row(
                f"bandwidth ceiling, one stream, tok/s (at {bandwidth:.1f} GB/s measured)",
                _fmt(c_ceil, ".0f"),
                _fmt(l_ceil, ".0f"),
                _fmt(ratio(c_ceil, l_ceil), ".2f"),
                "",
            )
        )
        c_share = ratio(_get(c, "one_at_a_time", "tok_s"), c_ceil)
        l_share = ratio(_get(ll, "one_at_a_time", "tok_s"), l_ceil)
        rows.append(
            Row(
                "one stream as a share of its ceiling",
                _fmt(c_share and 100 * c_share, ".0f", "%"),
                _fmt(l_share and 100 * l_share, ".0f", "%"),
                "",
                "",
            )
        )
    step = c.get("decode_step")
    if step:
        rows.append(
            Row(
                "one decode step (batch 1): ops / matmul kernels / everything else",
                f"{step['ops']} ops, {step['matmul_ms']:.2f} ms / {step['other_ms']:.2f} ms",
                "",
                "",
                "",
            )
        )
    return rows


def format_table(rows: list[Row], header: str = "same machine, one run, alternating") -> str:
    """A Markdown table, ready for a dated report under docs/benchmarks/."""
    lines = [
        f"| {header} | ClawBot | llama-server | ClawBot/llama | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {r.label} | {r.clawbot} | {r.llama} | {r.ratio} | {r.target} |" for r in rows]
    return "\n".join(lines)


# -- quality of quantization modes against fp32 --------------------------------------------------------
def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def agreement(reference: list[list[int]], answers: list[list[int]]) -> dict[str, float]:
    """exact_match: share of answers identical to the reference's; token_agreement: mean share of tokens that agree
    before the first divergence (common prefix / the longer answer, so a truncated answer does not score 1)."""
    if len(reference) != len(answers) or not reference:
        raise ValueError(f"need one answer per reference answer, got {len(answers)} for {len(reference)}")
    exact = sum(r == a for r, a in zip(reference, answers)) / len(reference)
    shares = [common_prefix(r, a) / max(len(r), len(a)) if (r or a) else 1.0 for r, a in zip(reference, answers)]
    return {"exact_match": exact, "token_agreement": sum(shares) / len(shares)}


def first_divergence(reference: list[list[int]], answers: list[list[int]]) -> dict[str, float]:
    """Against a peer's answers to the same prompts (greedy, fixed length): token_agreement as in `agreement`, and the
    mean position of the first token that differs (the answer's length where none does)."""
    result = agreement(reference, answers)
    positions = [common_prefix(r, a) for r, a in zip(reference, answers)]
    return {
        "token_agreement": result["token_agreement"],
        "exact_match": result["exact_match"],
        "mean_first_divergence": sum(positions) / len(positions),
    }


def format_llama_agreement_table(modes: dict[str, dict[str, float]], tokens: int) -> str:
    lines = [
        f"| mode | token agreement with llama-server | mean first divergence (of {tokens}) | identical answers |",
        "| --- | --- | --- | --- |",
    ]
    for mode, f in modes.items():
        lines.append(
            f"| {mode} | {f['token_agreement']:.2f} | {f['mean_first_divergence']:.1f} | {f['exact_match']:.2f} |"
        )
    return "\n".join(lines)


def format_quality_table(modes: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| mode | exact match with fp32 | token agreement | one stream, tok/s | parameter bytes | memory footprint "
        "| same answer alone and in a batch of 8 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for mode, f in modes.items():
        lines.append(
            f"| {mode} | {f['exact_match']:.2f} | {f['token_agreement']:.2f} | {f['tok_s']:.1f} | "
            f"{f['parameter_bytes'] / 1e6:.0f} MB | {f['memory_bytes'] / 1e6:.0f} MB | {f['batch_invariant']} |"
        )
    return "\n".join(lines)
