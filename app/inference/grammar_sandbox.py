"""Grammar compilation under a wall-clock budget: each new schema is first compiled in a child process that is
killed if it overruns, and only a schema that compiled there in time is compiled in the server.

Why a process, and why compile twice. xgrammar's compile is C++ that releases the GIL but cannot be interrupted
(mlc-ai/xgrammar#298), so a compile in a thread that overruns its budget could only be left running, holding a core
and its memory until it ends, minutes later for `a{1,10000}`; a process can be killed. Handing the compiled grammar
back from the process would save the second compile, but xgrammar 0.2.8 serializes a grammar with one copy of the
whole automaton per rule: 5,000 required properties compile in 0.3 s and serialize to 226 MB in 20 s. So the child
only proves that the schema compiles within the budget, without crashing, and the server then compiles it again in
a thread of its own (the GIL is released, the event loop runs on), knowing how long that takes. A schema's first use
costs two compiles; every later use costs nothing (app.inference.constraints caches the grammar).

The children are forked from multiprocessing's fork server, which imports xgrammar once, so replacing a killed child
takes milliseconds rather than the seconds of a fresh interpreter; each child then reads the tokenizer's vocabulary
once. Children and compile threads run at a lower CPU priority than the engine.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import re
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import xgrammar as xgr

log = logging.getLogger("clawbot.grammar")
# xgrammar prefixes its messages with a timestamp and a C++ source location; the client needs only the reason.
_LOCATION = re.compile(r"^\[[^\]]*\]\s+\S+:\d+:\s*")
READY = "ready"
START_TIMEOUT_S = 120.0  # a child's start (the fork server's first start imports xgrammar and torch)
NICENESS = 10
WARM_UP_SCHEMA = "{}"  # what each child compiles first, so the first real schema finds it ready


class GrammarError(ValueError):
    """A schema xgrammar cannot compile; the message says why."""


class CompilerCrashed(GrammarError):
    """The compile process died on the schema (a crash, or the kernel's OOM killer); the next try gets a new one."""


class CompileBudgetExceeded(TimeoutError):
    """The schema did not compile within the budget; its child process was killed."""


def new_compiler(info: xgr.TokenizerInfo) -> xgr.GrammarCompiler:
    # One thread per compile (the budget is wall-clock, and several compiles may run side by side); no cache of its
    # own: app.inference.constraints keeps one bounded in bytes.
    return xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)


def compile_schema(compiler: xgr.GrammarCompiler, schema_json: str) -> xgr.CompiledGrammar:
    """The one place a JSON Schema becomes a grammar, with the same options in the child and in the server."""
    try:
        # No free whitespace between tokens: a small model would otherwise pad with newlines until the cap.
        return compiler.compile_json_schema(schema_json, any_whitespace=False, strict_mode=True)
    except (RuntimeError, ValueError, TypeError) as exc:
        lines = str(exc).strip().splitlines()
        raise GrammarError(_LOCATION.sub("", lines[0]) if lines else type(exc).__name__) from None


def lower_priority() -> None:
    """Lower the calling thread's CPU priority (Linux schedules threads on their own), so compiles yield to the engine."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)
    except (AttributeError, OSError):  # not Linux, or not permitted: compiles then run at normal priority
        pass


def _child_main(conn: Connection, tokenizer_json: str) -> None:
    """A compile child: read schemas, compile each, answer ("ok", seconds) or ("invalid", reason)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the server stops its children
    lower_priority()
    compiler = new_compiler(xgr.TokenizerInfo.deserialize_json(tokenizer_json))
    conn.send(READY)
    while True:
        try:
            schema_json = conn.recv()
        except (EOFError, OSError):
            return  # the server closed its end or went away
        started = time.perf_counter()
        try:
            compile_schema(compiler, schema_json)
        except GrammarError as exc:
            conn.send(("invalid", str(exc)))
        else:
            conn.send(("ok", time.perf_counter() - started))


def _context() -> Any:
    """Children forked from a fork server that has imported this module (and xgrammar) once."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


class CompilerUnavailable(RuntimeError):
    """No compile process could be started; the schema is not at fault."""


class _Child:
    """One compile process, restarted in place when it is killed or dies."""

    def __init__(self, ctx: Any, tokenizer_json: str) -> None:
        self._ctx = ctx
        self._tokenizer_json = tokenizer_json
        self.process: Any = None
        self.conn: Connection | None = None
        self.ready = False

    def start(self) -> None:
        self.conn, theirs = self._ctx.Pipe()
        self.process = self._ctx.Process(
            target=_child_main, args=(theirs, self._tokenizer_json), name="grammar-compile", daemon=True
        )
        self.ready = False
        self.process.start()
        theirs.close()

    def compile(self, schema_json: str, budget_s: float) -> tuple[str, Any]:
        if self.process is None or self.conn is None:
            try:
                self.start()
            except OSError as exc:
                self.kill()
                raise CompilerUnavailable(f"the grammar compile process could not start: {exc}") from None
        assert self.conn is not None
        if not self.ready:
            try:
                if not self.conn.poll(START_TIMEOUT_S) or self.conn.recv() != READY:
                    raise CompilerUnavailable(f"the grammar compile process did not start within {START_TIMEOUT_S:g} s")
            except (EOFError, OSError):
                raise CompilerUnavailable("the grammar compile process exited as it started") from None
            self.ready = True
        self.conn.send(schema_json)
        if not self.conn.poll(budget_s):
            raise CompileBudgetExceeded()
        answer: tuple[str, Any] = self.conn.recv()
        return answer

    def exitcode(self) -> int | None:
        """How the process ended (a negative number is the signal that ended it); it is given a moment to be reaped."""
        if self.process is None:
            return None
        self.process.join(2)
        code: int | None = self.process.exitcode
        return code

    def kill(self) -> None:
        if self.process is not None:
            try:
                if self.process.is_alive():
                    self.process.kill()
                self.process.join(10)
                self.process.close()
            except (AssertionError, ValueError):  # never started, or still running after SIGKILL and 10 s
                pass
        if self.conn is not None:
            self.conn.close()
        self.process = self.conn = None
        self.ready = False


class CompileSandbox:
    """`workers` child processes that each compile one schema at a time under `budget_s` seconds.

    `trial(schema_json)` blocks (call it from a worker thread) until a child is free and has compiled the schema:
    it returns the compile's seconds, or raises GrammarError (xgrammar refused it, or the child died on it),
    CompileBudgetExceeded (the child was killed and replaced) or CompilerUnavailable.
    """

    def __init__(self, tokenizer_json: str, workers: int, budget_s: float) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.budget_s = budget_s
        self._idle: queue.Queue[_Child] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        ctx = _context()
        self._children = [_Child(ctx, tokenizer_json) for _ in range(workers)]
        for child in self._children:
            self._idle.put(child)
        # Started now, off the caller's thread: the fork server's first start imports xgrammar (seconds), and the
        # children are wanted by the first schema, not by the server's start.
        threading.Thread(target=self._warm, args=(self._children,), name="grammar-compile-start", daemon=True).start()

    def _warm(self, children: list[_Child]) -> None:
        # The fork server is started from this thread and inherits its priority: its start imports xgrammar (and
        # torch), seconds of CPU that would otherwise take a core from the first requests' decode steps.
        lower_priority()
        try:
            for _ in children:  # the idle queue is first-in first-out: each trial takes the next child
                self.trial(WARM_UP_SCHEMA)
        except Exception as exc:
            log.warning("grammar compile processes did not start", extra={"error": f"{type(exc).__name__}: {exc}"})

    def trial(self, schema_json: str) -> float:
        child = self._idle.get()
        try:
            kind, value = child.compile(schema_json, self.budget_s)
        except CompileBudgetExceeded:
            log.warning("grammar compile over budget; its process was killed", extra={"budget_s": self.budget_s})
            self._restart(child)
            raise
        except (EOFError, OSError) as exc:
            code = child.exitcode()
            log.error("grammar compile process died", extra={"error": f"{type(exc).__name__}: {exc}", "exitcode": code})
            self._restart(child)
            raise CompilerCrashed(
                f"the grammar compiler failed on this schema (its process exited with {code})"
            ) from None
        except CompilerUnavailable:
            self._restart(child)
            raise
        finally:
            self._release(child)
        if kind == "invalid":
            raise GrammarError(value)
        return float(value)

    @staticmethod
    def _restart(child: _Child) -> None:
        child.kill()  # started afresh by its next trial, so this one answers at once

    def _release(self, child: _Child) -> None:
        with self._lock:
            if not self._closed:
                self._idle.put(child)
                return
        child.kill()

    def close(self) -> None:
        """Stop the idle children; a child still compiling is stopped when its trial ends."""
        with self._lock:
            self._closed = True
        while True:
            try:
                self._idle.get_nowait().kill()
            except queue.Empty:
                return
