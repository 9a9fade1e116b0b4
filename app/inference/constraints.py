"""Grammar-constrained decoding through xgrammar: JSON Schemas compiled once per tokenizer, one matcher per request.

`Grammars` holds the tokenizer's vocabulary as xgrammar sees it and a compiler with a cache (a schema sent
on every request compiles once). `Grammars.constraint(schema)` returns a `GrammarConstraint`, the
`TokenConstraint` the sampler applies to that request's row only: it masks every token the grammar forbids,
end-of-sequence included until the JSON is complete, and advances as tokens are chosen.
"""
from __future__ import annotations

import json
import re
from typing import Any, Iterable

import torch
import xgrammar as xgr


# xgrammar prefixes its messages with a timestamp and a C++ source location; the client needs only the reason.
_LOCATION = re.compile(r"^\[[^\]]*\]\s+\S+:\d+:\s*")


class GrammarError(ValueError):
    """A schema xgrammar cannot compile; the message says why."""


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


class Grammars:
    """Compiles JSON Schemas for one tokenizer and hands out per-request constraints."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Iterable[int]) -> None:
        # The model's logits may be wider than the tokenizer's vocabulary (padded embeddings): the mask must match them.
        self.vocab_size = vocab_size
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_token_ids))
        self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=True)

    def compile(self, schema: dict[str, Any]) -> xgr.CompiledGrammar:
        try:
            # No free whitespace between tokens: a small model would otherwise pad with newlines until the cap.
            return self._compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=True)
        except (RuntimeError, ValueError, TypeError) as exc:
            lines = str(exc).strip().splitlines()
            raise GrammarError(_LOCATION.sub("", lines[0]) if lines else type(exc).__name__) from None

    def constraint(self, schema: dict[str, Any]) -> GrammarConstraint:
        return GrammarConstraint(self.compile(schema), self.vocab_size)
