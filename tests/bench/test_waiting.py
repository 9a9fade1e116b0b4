"""bench/waiting.py: the one bounded readiness loop, and a guard that no test or benchmark writes its own."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.waiting import WaitTimedOut, exited, wait_until, wait_until_async

ROOT = Path(__file__).resolve().parents[2]


def answers(*values: object) -> Iterator[object]:
    """A check's successive answers; the last one repeats."""
    yield from values
    while True:
        yield values[-1]


def test_returns_the_first_truthy_value() -> None:
    got = answers(None, 0, "", {"ready": True})
    assert wait_until("the third try", lambda: next(got), 10, poll_s=0) == {"ready": True}


def test_times_out_naming_what_it_waited_for() -> None:
    with pytest.raises(WaitTimedOut, match=r"^timed out after 0.05s waiting for the moon$") as failed:
        wait_until("the moon", lambda: False, 0.05, poll_s=0.01)
    assert isinstance(failed.value, AssertionError)  # a test fails, rather than errors


def test_ignored_errors_count_as_not_yet_and_the_last_one_is_reported() -> None:
    got = answers(ConnectionRefusedError("not listening"), "up")

    def check() -> object:
        value = next(got)
        if isinstance(value, Exception):
            raise value
        return value

    assert wait_until("the server", check, 10, poll_s=0, ignoring=(ConnectionError,)) == "up"
    with pytest.raises(WaitTimedOut, match=r"waiting for the server \(last error: ConnectionRefusedError\('never'\)\)"):
        wait_until(
            "the server",
            lambda: (_ for _ in ()).throw(ConnectionRefusedError("never")),
            0.05,
            poll_s=0.01,
            ignoring=(ConnectionError,),
        )


def test_other_errors_end_the_wait_at_once() -> None:
    with pytest.raises(KeyError):
        wait_until("a key", lambda: dict[str, int]()["missing"], 10, poll_s=0, ignoring=(ConnectionError,))


def test_give_up_ends_the_wait_before_the_timeout_with_its_reason() -> None:
    tries: list[int] = []
    with pytest.raises(WaitTimedOut, match=r"^gave up waiting for the server: it exited$"):
        wait_until("the server", lambda: tries.append(1), 600, poll_s=0, give_up=lambda: "it exited" if tries else None)
    assert tries == [1]


def test_detail_is_added_only_when_the_wait_fails() -> None:
    asked: list[int] = []

    def log_tail() -> str:
        asked.append(1)
        return "last log line"

    assert wait_until("x", lambda: True, 10, detail=log_tail) is True and not asked
    with pytest.raises(WaitTimedOut, match=r"waiting for x:\nlast log line$"):
        wait_until("x", lambda: False, 0.05, poll_s=0.01, detail=log_tail)


def test_exited_gives_up_once_the_process_has_ended() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    give_up = exited(proc, "the child")
    assert give_up() is None
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(30)
    assert give_up() == "the child exited with status 0"


def test_the_async_loop_awaits_its_check_and_keeps_the_event_loop_turning() -> None:
    async def run() -> object:
        ready = asyncio.Event()
        asyncio.get_running_loop().call_later(0.01, ready.set)  # runs only if the wait yields to the loop

        async def check() -> str | None:
            return "set" if ready.is_set() else None

        got = await wait_until_async("the event", check, 10, poll_s=0.005)
        sync_got = await wait_until_async("the event, checked synchronously", ready.is_set, 10)
        with pytest.raises(WaitTimedOut, match="timed out after 0.05s waiting for never"):
            await wait_until_async("never", lambda: None, 0.05, poll_s=0.01)
        return got, sync_got

    assert asyncio.run(run()) == ("set", True)


# -- no hand-written deadline loops ------------------------------------------------------------------------------
# A clock compared with something, or a deadline computed from a clock: a readiness loop of its own. Timing code that
# measures (`time.perf_counter() - started`) or timestamps (`time.time() + i`) is neither.
CLOCK = r"time\.(?:monotonic|time|perf_counter)(?:_ns)?\(\)"
DEADLINE_LOOP = re.compile(rf"{CLOCK}\s*[<>]|[<>]=?\s*{CLOCK}|deadline\w*\s*=\s*{CLOCK}\s*\+", re.IGNORECASE)
ALLOWED: dict[str, str] = {
    "bench/waiting.py": "the one loop itself",
    "tests/bench/test_waiting.py": "this guard's own examples of what it finds",
}


def deadline_loops(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if DEADLINE_LOOP.search(line)]


def test_the_guard_finds_deadline_loops_and_not_timing_code() -> None:
    assert deadline_loops("deadline = time.monotonic() + 30\nwhile time.monotonic() < deadline:\n    pass") == [
        "deadline = time.monotonic() + 30",
        "while time.monotonic() < deadline:",
    ]
    assert deadline_loops("assert time.time() < end, 'late'") and deadline_loops("if end <= time.perf_counter():")
    timing = "started = time.perf_counter()\nelapsed = time.perf_counter() - started\nat = time.time() + i * 0.001"
    assert deadline_loops(timing) == []


def test_no_test_or_benchmark_writes_its_own_deadline_loop() -> None:
    found = {
        f"{path.relative_to(ROOT)}: {line}"
        for folder in ("tests", "bench")  # scripts/ holds shell only
        for path in sorted((ROOT / folder).rglob("*.py"))
        if str(path.relative_to(ROOT)) not in ALLOWED
        for line in deadline_loops(path.read_text(errors="replace"))
    }
    assert not found, "wait with bench.waiting.wait_until (or wait_until_async) instead:\n" + "\n".join(sorted(found))
