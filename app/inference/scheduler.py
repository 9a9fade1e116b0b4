"""Which waiting requests join the running batch: a row cap and a KV-cache token budget (no model, no torch).

The engine keeps its KV cache left-padded, one row per request, so the cache of a batch is
`rows x width` tokens, where the width is the longest row's length. A request admitted now may
grow to its prompt plus its `max_new` tokens, so the budget is checked against the worst case:
the largest `rows x width` the batch can reach before its last row finishes (TGI reserves
`input + max_new_tokens` per request the same way). The budget shrinks after an out-of-memory
error, so the engine admits less instead of failing again, and creeps back after a quiet spell.

`KVBudget` is the only thing the engine asks about memory (`fits`, `shrink`, `step_ok`): a paged
cache can replace the accounting behind it without touching the scheduler's callers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# After an out-of-memory error the budget drops to this share of the cache the failing step held.
OOM_SHRINK = 0.75
# ...and grows back by this factor after this many steps without one, up to where it started, in case
# the error was a passing spike (another allocation, fragmentation) rather than a budget set too high.
RECOVERY_STEPS = 200
RECOVERY_GROWTH = 1.1


@dataclass(frozen=True)
class Demand:
    """What one row asks of the KV cache: the tokens it holds now and the tokens it may still add."""

    held: int
    remaining: int


def peak_kv_tokens(demands: Sequence[Demand]) -> int:
    """The largest `rows x width` the rows' cache reaches if every row runs to its cap.

    At step t the rows still running are those with `remaining >= t`, and the cache is as wide as the
    longest of them, `max(held) + t`. Within a stretch where no row leaves, the product grows with t,
    so the peak is at one of the rows' last steps: walk the rows from the longest-running down.
    """
    peak = rows = longest = 0
    for demand in sorted(demands, key=lambda d: d.remaining, reverse=True):
        rows += 1
        longest = max(longest, demand.held)
        peak = max(peak, rows * (longest + demand.remaining))
    return peak


class KVBudget:
    """How many KV-cache tokens the running batch may need at its peak; shrinks after an out-of-memory error."""

    def __init__(self, tokens: int) -> None:
        if tokens < 1:
            raise ValueError(f"the KV budget must be at least 1 token, got {tokens}")
        self._tokens = tokens
        self.initial = tokens
        self._quiet_steps = 0

    @property
    def tokens(self) -> int:
        return self._tokens

    def fits(self, peak: int) -> bool:
        return peak <= self._tokens

    def shrink(self, tokens_at_failure: int) -> int:
        """Lower the budget below the cache size that just failed; returns the new budget.

        No floor is needed: an empty batch always takes its first request whatever the budget.
        """
        self._tokens = max(1, min(self._tokens, int(tokens_at_failure * OOM_SHRINK)))
        self._quiet_steps = 0
        return self._tokens

    def step_ok(self) -> bool:
        """Count a step that did not run out of memory; True when that grew the budget back a little."""
        if self._tokens >= self.initial:
            return False
        self._quiet_steps += 1
        if self._quiet_steps < RECOVERY_STEPS:
            return False
        self._quiet_steps = 0
        self._tokens = min(self.initial, max(self._tokens + 1, int(self._tokens * RECOVERY_GROWTH)))
        return True


class Scheduler:
    """FIFO admission under a row cap and a KV budget."""

    def __init__(self, max_rows: int, budget: KVBudget) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self.max_rows = max_rows
        self.budget = budget

    def admit(self, running: Sequence[Demand], waiting: Sequence[Demand]) -> int:
        """How many requests from the head of `waiting` join the batch now.

        Strict FIFO: a request that does not fit blocks the ones behind it, so a long request is never
        starved by short ones. An empty batch always takes its head, even over budget (it could never
        run otherwise; the engine's out-of-memory handling covers it).
        """
        room = min(self.max_rows - len(running), len(waiting))
        if room <= 0:
            return 0
        # Adding rows never lowers the peak, so the largest prefix that fits can be found by bisection.
        lo, hi = 0, room
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.budget.fits(peak_kv_tokens([*running, *waiting[:mid]])):
                lo = mid
            else:
                hi = mid - 1
        return max(lo, 1) if not running else lo
