"""Run torch work in a thread that exits when it is done, so it leaves no OpenMP thread pool behind.

The CPU build of torch parallelises with GNU OpenMP (libgomp), which keeps one worker pool per thread that has
started a parallel region. Once the process holds more pool threads than CPUs, libgomp stops spinning while it
waits between regions and sleeps instead, so every parallel region pays a futex wake-up. With a pool left over
from loading the model (in an asyncio executor thread, which lives on), the engine thread's decode step took twice
as long on a 2-core machine: 21 ms instead of 10.5 ms per token for int8 weights, 45 us instead of 4 us for a
small softmax. A thread's pool is freed when the thread exits, so work that must run outside the engine thread
(loading, quantizing) runs here and the engine thread is the only one left with a pool.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def run_in_own_thread(fn: Callable[..., T], *args: Any, name: str = "clawbot-torch") -> T:
    """fn(*args) in a new thread, joined before returning; its exception is re-raised here."""
    results: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(fn(*args))
        except BaseException as exc:  # handed to the caller, which decides
            errors.append(exc)

    worker = threading.Thread(target=target, name=name, daemon=True)
    worker.start()
    worker.join()
    if errors:
        raise errors[0]
    return results[0]
