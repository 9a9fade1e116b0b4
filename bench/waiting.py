"""The one readiness loop of the tests and benchmarks: poll a condition, bounded in time, never a fixed sleep.

Tests import it too (`from bench.waiting import wait_until`): a server coming up, a request in flight, a metric that
changed, a row written. It lives here because the benchmarks must not import the tests. `wait_until_async` is the
same loop for a test already on an event loop (its check may be a coroutine function; the loop keeps turning).
"""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class WaitTimedOut(AssertionError):
    """The condition did not hold in time (an AssertionError, so a test fails rather than errors)."""


def exited(proc: subprocess.Popen[Any], name: str) -> Callable[[], str | None]:
    """A `give_up` for waiting on a child process: it ends the wait once the process has exited."""
    return lambda: None if proc.poll() is None else f"{name} exited with status {proc.returncode}"


class _Wait:
    """What both loops share: the deadline, the last ignored error, and the failure message."""

    def __init__(
        self, what: str, timeout_s: float, give_up: Callable[[], str | None] | None, detail: Callable[[], str] | None
    ) -> None:
        self.what, self.timeout_s, self.give_up, self.detail = what, timeout_s, give_up, detail
        self.deadline = time.monotonic() + timeout_s
        self.last: BaseException | None = None

    def _failed(self, message: str) -> WaitTimedOut:
        return WaitTimedOut(f"{message}:\n{self.detail()}" if self.detail is not None else message)

    def before_try(self) -> None:
        if self.give_up is not None and (reason := self.give_up()):
            raise self._failed(f"gave up waiting for {self.what}: {reason}")

    def after_miss(self) -> None:
        if time.monotonic() >= self.deadline:
            tail = f" (last error: {self.last!r})" if self.last is not None else ""
            raise self._failed(f"timed out after {self.timeout_s:g}s waiting for {self.what}{tail}")


def wait_until(
    what: str,
    check: Callable[[], T | None],
    timeout_s: float,
    *,
    poll_s: float = 0.2,
    ignoring: tuple[type[BaseException], ...] = (),
    give_up: Callable[[], str | None] | None = None,
    detail: Callable[[], str] | None = None,
) -> T:
    """Call `check` until it returns something truthy and return that; raise WaitTimedOut naming `what` after
    `timeout_s`. Exceptions of the `ignoring` types count as "not yet" (a server not listening yet). `give_up`,
    asked before each try, ends the wait at once with the reason it returns (a process that exited). `detail`, asked
    only when the wait fails, adds its text to the message (a server's log tail)."""
    wait = _Wait(what, timeout_s, give_up, detail)
    while True:
        wait.before_try()
        try:
            got = check()
        except ignoring as e:
            got, wait.last = None, e
        if got:
            return got
        wait.after_miss()
        time.sleep(poll_s)


async def wait_until_async(
    what: str,
    check: Callable[[], Any],
    timeout_s: float,
    *,
    poll_s: float = 0.05,
    ignoring: tuple[type[BaseException], ...] = (),
    give_up: Callable[[], str | None] | None = None,
    detail: Callable[[], str] | None = None,
) -> Any:
    """`wait_until` on an event loop: `check` may be a coroutine function (its result is awaited), and the pause
    between tries lets the loop run. (Typed loosely: a checker cannot tell a sync check from an async one here.)"""
    wait = _Wait(what, timeout_s, give_up, detail)
    while True:
        wait.before_try()
        try:
            got = check()
            if inspect.isawaitable(got):
                got = await got
        except ignoring as e:
            got, wait.last = None, e
        if got:
            return got
        wait.after_miss()
        await asyncio.sleep(poll_s)
