"""The scheduler alone (no model): the worst-case KV peak, FIFO admission under a row cap and a token budget."""

from __future__ import annotations

import random

import pytest

from app.inference.scheduler import OOM_SHRINK, RECOVERY_STEPS, Demand, KVBudget, Scheduler, peak_kv_tokens


def simulated_peak(demands: list[Demand]) -> int:
    """Step the left-padded batch forward token by token: rows x width at every step, rows leaving at their cap."""
    peak = 0
    for t in range(max(d.remaining for d in demands) + 1):
        alive = [d for d in demands if d.remaining >= t]
        peak = max(peak, len(alive) * max(d.held + t for d in alive))
    return peak


def test_peak_matches_a_step_by_step_simulation() -> None:
    rng = random.Random(7)
    for _ in range(300):
        demands = [Demand(held=rng.randint(1, 60), remaining=rng.randint(0, 40)) for _ in range(rng.randint(1, 9))]
        assert peak_kv_tokens(demands) == simulated_peak(demands), demands


def test_peak_counts_padding_a_long_row_forces_on_short_ones() -> None:
    # One 1000-token prompt beside three 10-token ones: the cache is 4 rows x 1000+ columns, not 1030 tokens.
    demands = [Demand(1000, 10), Demand(10, 10), Demand(10, 10), Demand(10, 10)]
    assert peak_kv_tokens(demands) == 4 * 1010


def test_admission_stops_at_the_budget_and_stays_fifo() -> None:
    scheduler = Scheduler(max_rows=8, budget=KVBudget(60))
    waiting = [Demand(10, 10)] * 5
    assert scheduler.admit([], waiting) == 3  # 3 rows x 20 tokens at the peak
    assert scheduler.admit([Demand(10, 10)] * 3, waiting) == 0
    # A big head blocks smaller requests behind it rather than being starved by them.
    assert scheduler.admit([Demand(10, 10)], [Demand(40, 10), Demand(5, 1)]) == 0


def test_the_row_cap_still_applies_under_a_large_budget() -> None:
    scheduler = Scheduler(max_rows=4, budget=KVBudget(1_000_000))
    assert scheduler.admit([Demand(5, 5)], [Demand(5, 5)] * 10) == 3


def test_an_empty_batch_always_takes_its_head_even_over_budget() -> None:
    scheduler = Scheduler(max_rows=8, budget=KVBudget(50))
    assert scheduler.admit([], [Demand(400, 100), Demand(1, 1)]) == 1
    assert scheduler.admit([Demand(1, 1)], [Demand(400, 100)]) == 0


def test_budget_shrinks_below_what_failed_and_creeps_back_after_quiet_steps() -> None:
    budget = KVBudget(10_000)
    assert budget.shrink(8_000) == int(8_000 * OOM_SHRINK)
    assert budget.shrink(20_000) == int(8_000 * OOM_SHRINK)  # a failure at a bigger size never raises it
    assert budget.shrink(1) == 1
    grown = [budget.step_ok() for _ in range(RECOVERY_STEPS * 200)]
    assert sum(grown) > 1 and budget.tokens == budget.initial == 10_000
    assert not budget.step_ok()  # never above where it started


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1 token, got 0"):
        KVBudget(0)
    with pytest.raises(ValueError, match="max_rows must be at least 1, got 0"):
        Scheduler(0, KVBudget(10))
