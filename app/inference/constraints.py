"""Grammar-constrained decoding through xgrammar: JSON Schemas checked, compiled off the event loop under a budget,
cached in bytes, and one matcher per request.

`Grammars.constraint(schema)` (a coroutine) returns a `GrammarConstraint`, the `TokenConstraint` the sampler applies
to that request's row only: it masks every token the grammar forbids, end-of-sequence included until the JSON is
complete, and advances as tokens are chosen. On the way, in worker threads and never on the event loop:

1. the schema is held to app.inference.schema_limits (size, depth, enums, patterns; keywords the grammar would
   drop), which refuses a bad schema before any compile;
2. a schema not seen before is compiled in a child process under GRAMMAR_COMPILE_TIMEOUT_SECONDS, then in the server
   (app.inference.grammar_sandbox explains why twice), by at most GRAMMAR_COMPILE_WORKERS compiles at a time, and
   one at a time per API key, so a key that sends slow schemas holds one worker and the others get the rest;
3. the compiled grammar is kept in an LRU cache keyed by the schema's hash and bounded by GRAMMAR_CACHE_BYTES, so a
   repeated schema costs nothing; a refused schema is remembered for a while too, so sending it again costs nothing.

Requests that wait for the same new schema share one compile.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import xgrammar as xgr

from app.inference.grammar_sandbox import (
    CompileBudgetExceeded,
    CompilerCrashed,
    CompilerUnavailable,
    CompileSandbox,
    GrammarError,
    compile_schema,
    lower_priority,
    new_compiler,
)
from app.inference.schema_limits import (
    SchemaLimits,
    SchemaRefused,
    SchemaTooComplex,
    check_schema,
    schema_key,
    schema_text,
)

__all__ = [
    "CompilerUnavailable",
    "GrammarCache",
    "GrammarConstraint",
    "GrammarError",
    "Grammars",
    "SchemaRefused",
]
REFUSALS_KEPT = 1024
REFUSAL_TTL_S = 600.0  # a schema refused for its compile time may compile in time on a quieter replica later


class GrammarConstraint:
    """A TokenConstraint over one compiled grammar; the state of one generation."""

    def __init__(self, compiled: xgr.CompiledGrammar, vocab_size: int) -> None:
        self._matcher = xgr.GrammarMatcher(compiled)
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def mask(self, logits: torch.Tensor) -> None:
        self._matcher.fill_next_token_bitmask(self._bitmask)
        xgr.apply_token_bitmask_inplace(logits, self._bitmask.to(logits.device, non_blocking=True))

    def advance(self, token_id: int) -> None:
        if not self._matcher.is_terminated():
            self._matcher.accept_token(token_id)

    @property
    def finished(self) -> bool:
        return bool(self._matcher.is_terminated())


class GrammarCache:
    """Compiled grammars by schema key, least recently used first out, bounded by their size in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, tuple[xgr.CompiledGrammar, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> xgr.CompiledGrammar | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: str, compiled: xgr.CompiledGrammar) -> None:
        size = int(compiled.memory_size_bytes)
        if size > self.max_bytes:
            return  # used by the requests that asked for it, never kept
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._items[key] = (compiled, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self.bytes -= evicted


class _Refusals:
    """Schemas refused recently, by key, with the error to raise again."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, tuple[float, Exception]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Exception | None:
        """A new exception like the one the schema was refused with (a stored one would collect tracebacks)."""
        with self._lock:
            item = self._items.get(key)
            if item is None or time.monotonic() - item[0] > REFUSAL_TTL_S:
                return None
            return type(item[1])(str(item[1]))

    def put(self, key: str, error: Exception) -> None:
        with self._lock:
            self._items[key] = (time.monotonic(), error)
            self._items.move_to_end(key)
            while len(self._items) > REFUSALS_KEPT:
                self._items.popitem(last=False)


class _Turn:
    """The compile turn of one owner: its lock, and how many of its requests hold or wait for it."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class Grammars:
    """Checks, compiles and caches JSON Schemas for one tokenizer and hands out per-request constraints."""

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        stop_token_ids: Iterable[int],
        *,
        compile_timeout_s: float = 5.0,
        workers: int = 2,
        cache_bytes: int = 64 * 1_048_576,
        limits: SchemaLimits | None = None,
    ) -> None:
        # The model's logits may be wider than the tokenizer's vocabulary (padded embeddings): the mask must match them.
        self.vocab_size = vocab_size
        self.limits = limits or SchemaLimits()
        self.compile_timeout_s = compile_timeout_s
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_token_ids)
        )
        self._info = info
        self._local = threading.local()
        self.cache = GrammarCache(cache_bytes)
        self._refused = _Refusals()
        self._pending: dict[str, asyncio.Future[xgr.CompiledGrammar]] = {}
        self._turns: dict[str, _Turn] = {}
        self._sandbox = CompileSandbox(info.serialize_json(), workers, compile_timeout_s)
        self._compiles = ThreadPoolExecutor(workers, thread_name_prefix="grammar-compile", initializer=lower_priority)

    async def constraint(self, schema: dict[str, Any], owner: str = "") -> GrammarConstraint:
        """The constraint for one request of `owner` (an API key); raises SchemaRefused, GrammarError or
        CompilerUnavailable."""
        compiled = await self.compiled(schema, owner)
        return GrammarConstraint(compiled, self.vocab_size)

    async def compiled(self, schema: dict[str, Any], owner: str = "") -> xgr.CompiledGrammar:
        found, key, text = await asyncio.to_thread(self._screen, schema)
        if found is not None:
            return found
        # One new schema per owner at a time: a key that sends many slow schemas holds one compile worker, and the
        # other keys' schemas get the rest.
        turn = self._turns.setdefault(owner, _Turn())
        turn.users += 1
        try:
            async with turn.lock:
                return await self._compiled_once(key, text)
        finally:
            turn.users -= 1
            if turn.users == 0:
                self._turns.pop(owner, None)

    async def _compiled_once(self, key: str, text: str) -> xgr.CompiledGrammar:
        compiled = self.cache.get(key)  # compiled while this request waited for its turn
        if compiled is not None:
            return compiled
        refused = self._refused.get(key)
        if refused is not None:
            raise refused
        pending = self._pending.get(key)
        if pending is None:
            loop = asyncio.get_running_loop()
            pending = loop.run_in_executor(self._compiles, self._compile, key, text)
            self._pending[key] = pending
            pending.add_done_callback(lambda done: self._settled(key, done))
        # Shielded: a client that goes away stops waiting, but the compile goes on for the others (and the cache).
        return await asyncio.shield(pending)

    def _settled(self, key: str, done: asyncio.Future[xgr.CompiledGrammar]) -> None:
        self._pending.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved here, so a compile whose clients all left is not reported as unhandled

    def _screen(self, schema: dict[str, Any]) -> tuple[xgr.CompiledGrammar | None, str, str]:
        """The cached grammar, or the schema's key and JSON once it is within the limits. In a worker thread."""
        text = schema_text(schema)
        key = schema_key(text)
        compiled = self.cache.get(key)
        if compiled is not None:
            return compiled, key, text
        refused = self._refused.get(key)
        if refused is not None:
            raise refused
        try:
            check_schema(schema, self.limits, text)
        except SchemaRefused as exc:
            self._refused.put(key, exc)
            raise
        return None, key, text

    def _compile(self, key: str, text: str) -> xgr.CompiledGrammar:
        """Compile in a child under the budget, then here. In a compile thread."""
        try:
            self._sandbox.trial(text)
        except CompileBudgetExceeded:
            error = SchemaTooComplex(
                f"the schema did not compile within GRAMMAR_COMPILE_TIMEOUT_SECONDS ({self.compile_timeout_s:g} s)"
            )
            self._refused.put(key, error)
            raise error from None
        except CompilerCrashed:
            raise  # not remembered: the process may have died of something else (memory, a signal)
        except GrammarError as exc:
            self._refused.put(key, exc)
            raise
        compiler = getattr(self._local, "compiler", None)
        if compiler is None:
            compiler = self._local.compiler = new_compiler(self._info)
        compiled = compile_schema(compiler, text)
        self.cache.put(key, compiled)
        return compiled

    def close(self) -> None:
        self._sandbox.close()
        self._compiles.shutdown(wait=False, cancel_futures=True)
