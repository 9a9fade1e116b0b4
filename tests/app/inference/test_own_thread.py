"""run_in_own_thread: the result or the exception comes back, and the thread (with its OpenMP pool) is gone."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from app.inference.own_thread import run_in_own_thread
from bench.waiting import wait_until


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_returns_the_result_computed_in_another_thread() -> None:
    caller = threading.get_ident()
    ident, value = run_in_own_thread(lambda a, b: (threading.get_ident(), a + b), 2, 3)
    assert value == 5 and ident != caller


def test_reraises_the_exception_of_the_thread() -> None:
    def fail() -> None:
        raise ValueError("no model here")

    with pytest.raises(ValueError, match="no model here"):
        run_in_own_thread(fail)


def test_leaves_no_thread_behind_after_parallel_torch_work() -> None:
    """The point of the helper: the OpenMP workers started for a parallel region go away with the thread."""
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("needs Linux /proc to count the process's threads")
    before = _os_threads()
    seen: list[int] = []

    def work() -> float:
        x = torch.randn(512, 512)
        total = float((x @ x).softmax(-1).sum())  # parallel regions: the pool starts in this thread
        seen.append(_os_threads())
        return total

    assert run_in_own_thread(work) > 0
    assert seen[0] >= before + 1  # this thread at least, plus its pool when torch runs more than one thread
    # The OS reaps exited threads a moment after join; other tests' threads may still be winding down, never more.
    wait_until(f"the thread count to fall back to {before}", lambda: _os_threads() <= before, 10, poll_s=0.01)
