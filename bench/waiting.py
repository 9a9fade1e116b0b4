"""The one readiness loop of the tests and benchmarks: poll a condition, bounded in time, never a fixed sleep.

Tests import it too (`from bench.waiting import wait_until`): a server coming up, a request in flight, a metric that
changed, a row written. It lives here because the benchmarks must not import the tests.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimedOut(AssertionError):
    """The condition did not hold in time (an AssertionError, so a test fails rather than errors)."""


def wait_until(what: str, check: Callable[[], T | None], timeout_s: float, *, poll_s: float = 0.2,
               ignoring: tuple[type[BaseException], ...] = (), give_up: Callable[[], str | None] | None = None) -> T:
    """Call `check` until it returns something truthy and return that; raise WaitTimedOut naming `what` after
    `timeout_s`. Exceptions of the `ignoring` types count as "not yet" (a server not listening yet). `give_up`,
    asked before each try, ends the wait at once with the reason it returns (a process that exited)."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while True:
        if give_up is not None and (reason := give_up()):
            raise WaitTimedOut(f"gave up waiting for {what}: {reason}")
        try:
            got = check()
        except ignoring as e:
            got, last = None, e
        if got:
            return got
        if time.monotonic() >= deadline:
            tail = f" (last error: {last!r})" if last is not None else ""
            raise WaitTimedOut(f"timed out after {timeout_s:g}s waiting for {what}{tail}")
        time.sleep(poll_s)
