"""The peer and quality benches' arithmetic on canned figures: ratios, targets, bytes per token, the bandwidth ceiling."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bench.report import (
    agreement,
    build_rows,
    ceiling_tok_s,
    first_divergence,
    format_llama_agreement_table,
    format_quality_table,
    format_table,
    median_round,
    ms_per_token,
    percentile,
    ratio,
    round_ratios,
)

# The issue's figures (SmolLM2-135M on the 2-core machine), in the shape bench/peer.py writes.
ISSUE_RUN = {
    "concurrency": 32,
    "max_tokens": 48,
    "bandwidth_gb_s": 28.0,
    "clawbot": {
        "bytes_per_token": 540_000_000,
        "raw_generate": {"tok_s": 232.0},
        "one_at_a_time": {"tok_s": 24.0},
        "concurrent": {"tok_s": 218.0},
        "streaming": {"ttft_p50_s": 1.70},
        "conversations": {"n": 200, "ttft_p50_s": 18.5, "ttft_p99_s": 35.4, "errors": 0},
        "prefix": {"prefix_tokens": 2010, "uncached_ttft_s": 1.0, "cached_ttft_s": 0.15, "cached_tokens": 2000},
    },
    "llama": {
        "bytes_per_token": 90_000_000,
        "one_at_a_time": {"tok_s": 151.0},
        "concurrent": {"tok_s": 234.0},
        "streaming": {"ttft_p50_s": 2.77},
        "conversations": {"n": 200, "ttft_p50_s": 11.8, "ttft_p99_s": 21.4, "errors": 0},
    },
}


def by_label(rows: list, start: str):  # type: ignore[no-untyped-def]
    return next(r for r in rows if r.label.startswith(start))


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0, 1.0, 3.0], 99) == pytest.approx(4.96)
    assert math.isnan(percentile([], 50))


def test_ratio_is_none_when_a_side_is_missing_or_zero() -> None:
    assert ratio(24.0, 151.0) == pytest.approx(0.159, abs=1e-3)
    assert ratio(None, 1.0) is None and ratio(1.0, 0.0) is None and ratio(float("nan"), 1.0) is None


def test_bandwidth_ceiling_is_bandwidth_over_bytes_per_token() -> None:
    # fp32 SmolLM2-135M: 540 MB per token at 28 GB/s caps one stream near 52 tok/s; Q4_1's 90 MB near 311 tok/s.
    assert ceiling_tok_s(28.0, 540_000_000) == pytest.approx(51.85, abs=0.01)
    assert ceiling_tok_s(28.0, 90_000_000) == pytest.approx(311.1, abs=0.1)
    assert ms_per_token(24.0) == pytest.approx(41.67, abs=0.01)


def test_table_shows_the_issue_ratios_and_whether_targets_are_met() -> None:
    rows = build_rows(ISSUE_RUN)
    one = by_label(rows, "one request at a time")
    assert one.clawbot == "24.0 (41.7 ms/token)" and one.llama == "151.0 (6.6 ms/token)"
    assert one.ratio == "0.16" and one.target == ">= 0.8 NOT met"
    batch = by_label(rows, "32 clients, tok/s")
    assert batch.ratio == "0.93" and batch.target == ">= 2 NOT met"
    raw = by_label(rows, "32 clients: ClawBot / raw")
    assert raw.ratio == "0.94" and raw.target == ">= 0.85 met"
    conv = by_label(rows, "200 streaming conversations")
    assert conv.clawbot == "18.50 / 35.40 s, 0 errors" and conv.ratio == "1.65 (p99)" and conv.target == "<= 1 NOT met"
    prefix = by_label(rows, "shared 2010-token prefix")
    assert prefix.ratio == "0.15" and prefix.target == "<= 0.2 met" and "cached_tokens: 2000" in prefix.clawbot
    assert by_label(rows, "bytes read per token").clawbot == "540.0 MB"
    assert by_label(rows, "bytes read per token").target == "<= 1.1 NOT met"
    ceiling = by_label(rows, "bandwidth ceiling")
    assert (ceiling.clawbot, ceiling.llama) == ("52", "311") and "28.0 GB/s" in ceiling.label
    share = by_label(rows, "one stream as a share")
    assert (share.clawbot, share.llama) == ("46%", "49%")
    table = format_table(rows)
    assert table.splitlines()[0].startswith("| same machine") and table.count("\n") == len(rows) + 1


def test_errors_under_load_fail_the_conversation_target() -> None:
    run = {
        **ISSUE_RUN,
        "clawbot": {
            **ISSUE_RUN["clawbot"],
            "conversations": {"n": 200, "ttft_p50_s": 1.0, "ttft_p99_s": 2.0, "errors": 3},
        },
    }
    assert by_label(build_rows(run), "200 streaming").target == "<= 1 met; 3 errors (target 0)"


def test_a_subset_run_leaves_unmeasured_cells_empty() -> None:
    run = {"clawbot": {"one_at_a_time": {"tok_s": 30.0}}, "llama": {"one_at_a_time": {"tok_s": 60.0}}}
    rows = build_rows(run)
    assert by_label(rows, "one request").ratio == "0.50" and by_label(rows, "one request").target == ">= 0.8 NOT met"
    assert by_label(rows, "32 clients, tok/s").clawbot == "—" and by_label(rows, "32 clients, tok/s").ratio == "—"
    assert not any(r.label.startswith(("shared", "bytes", "bandwidth")) for r in rows)


def test_prefix_row_says_when_cached_tokens_are_not_reported() -> None:
    run = {
        "clawbot": {
            "prefix": {"prefix_tokens": 2000, "uncached_ttft_s": 1.0, "cached_ttft_s": 1.0, "cached_tokens": None}
        }
    }
    row = by_label(build_rows(run), "shared 2000-token prefix")
    assert row.ratio == "1.00" and row.target == "<= 0.2 NOT met" and "not reported" in row.clawbot


def test_agreement_counts_exact_answers_and_tokens_before_the_first_divergence() -> None:
    reference = [[1, 2, 3, 4], [5, 6], [7, 8, 9, 10]]
    answers = [[1, 2, 3, 4], [5, 0], [7, 8]]  # same; diverges at token 2; stops early (2 of 4 agree)
    result = agreement(reference, answers)
    assert result["exact_match"] == pytest.approx(1 / 3)
    assert result["token_agreement"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    with pytest.raises(ValueError, match="one answer per reference"):
        agreement(reference, answers[:2])


def test_memory_and_decode_step_rows_show_what_a_gguf_run_adds() -> None:
    run = {
        **ISSUE_RUN,
        "gguf_file_bytes": 100_000_000,
        "clawbot": {
            **ISSUE_RUN["clawbot"],
            "memory_bytes": 105_000_000,
            "decode_step": {"ops": 640, "matmul_ms": 5.5, "other_ms": 2.25},
        },
    }
    rows = build_rows(run)
    memory = by_label(rows, "resident model memory")
    assert (memory.clawbot, memory.llama, memory.ratio, memory.target) == ("105.0 MB", "100.0 MB", "1.05", "<= 1.3 met")
    assert by_label(rows, "one decode step").clawbot == "640 ops, 5.50 ms / 2.25 ms"


def test_agreement_with_llama_reports_the_mean_first_divergence() -> None:
    llama = [[1, 2, 3, 4], [5, 6, 7, 8]]
    ours = [[1, 2, 3, 4], [5, 0, 7, 8]]
    result = first_divergence(llama, ours)
    assert result["mean_first_divergence"] == pytest.approx((4 + 1) / 2)
    assert result["token_agreement"] == pytest.approx((1 + 0.25) / 2)
    table = format_llama_agreement_table({"gguf": result}, 4)
    assert table.splitlines()[2] == "| gguf | 0.62 | 2.5 | 0.50 |"


def test_quality_table_lists_each_mode() -> None:
    modes = {
        "fp32": {
            "exact_match": 1.0,
            "token_agreement": 1.0,
            "tok_s": 24.0,
            "parameter_bytes": 538_000_000,
            "memory_bytes": 540_000_000,
            "batch_invariant": "8/8",
        },
        "nf4": {
            "exact_match": 0.25,
            "token_agreement": 0.4,
            "tok_s": 9.5,
            "parameter_bytes": 90_000_000,
            "memory_bytes": 150_000_000,
            "batch_invariant": "6/8",
        },
    }
    lines = format_quality_table(modes).splitlines()
    assert lines[2] == "| fp32 | 1.00 | 1.00 | 24.0 | 538 MB | 540 MB | 8/8 |"
    assert lines[3] == "| nf4 | 0.25 | 0.40 | 9.5 | 90 MB | 150 MB | 6/8 |"


def test_rounds_report_the_median_of_paired_ratios_and_their_range() -> None:
    # Round 2 landed on a busy neighbour for ClawBot; round 3 for llama. The median pair is round 1's.
    c: dict[str, Any] = {"concurrent_rounds": [{"tok_s": 200.0}, {"tok_s": 120.0}, {"tok_s": 210.0}]}
    ll: dict[str, Any] = {"concurrent_rounds": [{"tok_s": 95.0}, {"tok_s": 100.0}, {"tok_s": 60.0}]}
    assert round_ratios(c, ll, "concurrent") == pytest.approx([200 / 95, 1.2, 3.5])
    c["concurrent"], ll["concurrent"] = median_round(c["concurrent_rounds"]), median_round(ll["concurrent_rounds"])
    assert c["concurrent"] == {"tok_s": 200.0} and ll["concurrent"] == {"tok_s": 95.0}
    batch = by_label(build_rows({"clawbot": c, "llama": ll}), "32 clients, tok/s")
    assert (batch.clawbot, batch.llama) == ("200.0", "95.0")
    assert batch.ratio == "2.11 (rounds 1.20–3.50, median of 3)" and batch.target == ">= 2 met"
    # Only rounds both sides ran are paired; one round is a plain ratio.
    c["concurrent_rounds"] = c["concurrent_rounds"][:1]
    assert by_label(build_rows({"clawbot": c, "llama": ll}), "32 clients, tok/s").ratio == "2.11"


def test_median_round_of_an_even_count_is_the_lower_middle() -> None:
    rounds = [{"tok_s": 4.0}, {"tok_s": 1.0}, {"tok_s": 3.0}, {"tok_s": 2.0}]
    assert median_round(rounds) == {"tok_s": 2.0}
