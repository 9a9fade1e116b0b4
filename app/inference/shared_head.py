"""A group's shared prompt head, read once.

Requests admitted together often begin with the same tokens: a chat template's system prompt, an agent's
instructions. Before a group's prefill (`engine_core._start_prefill`), the longest head that the group's rows of one
prefix scope share is prefilled once, as one row, and its keys and values are handed to each of those rows as a
prefix hit: `model_runner.PrefillJob` then lays each row out as [head, the rest] and reads only the rests. For 32
chat requests whose template adds a 24-token system prompt to 13 tokens of their own, that is 24 + 32 x 13 tokens
read instead of 32 x 37.

Rules, the prefix cache's own (`app.inference.prefix_cache`): only rows of one scope (one API key) share a head, so
no key's timing tells it what another key's prompts begin with; each row keeps at least one token to read (its
first output token needs the logits); it is off when the prefix cache is (`PREFIX_CACHE_TOKENS=0`). A head shorter
than MIN_SHARED_TOKENS is not worth its extra pass. The shared tokens are not reported as `cached_tokens`: they
were read for this group, not found in a cache. Keys and values depend on the tokens before them and on their
positions only, and the head sits at the same positions in every row, so the rows' outputs are the same as when
each reads its head itself (to the arithmetic's summation order; tests/app/inference/test_shared_head.py).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import DynamicCache

from app.inference.prefix_cache import PrefixHit
from app.inference.request_state import RequestState

MIN_SHARED_TOKENS = 16


def common_head(contexts: list[list[int]]) -> int:
    """How many leading tokens every context shares, leaving each at least one token after them."""
    return max(min(len(os.path.commonprefix(contexts)), min(len(c) for c in contexts) - 1), 0)


def shared_heads(model: Any, rows: list[RequestState], device: torch.device) -> list[PrefixHit | None] | None:
    """One prefix hit a row, the same object for the rows that share a head; None when no rows share one."""
    by_scope: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        by_scope.setdefault(row.prefix_scope, []).append(index)
    hits: list[PrefixHit | None] = [None] * len(rows)
    for members in by_scope.values():
        if len(members) < 2:
            continue
        contexts = [rows[i].context_ids for i in members]
        n = common_head(contexts)
        if n < MIN_SHARED_TOKENS:
            continue
        hit = _read_head(model, contexts[0][:n], device)
        for i in members:
            hits[i] = hit
    return hits if any(hit is not None for hit in hits) else None


def _read_head(model: Any, ids: list[int], device: torch.device) -> PrefixHit:
    cache = DynamicCache()
    with torch.inference_mode():
        model(
            input_ids=torch.tensor([ids], dtype=torch.long, device=device),
            attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=device),
            position_ids=torch.arange(len(ids), device=device)[None],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
    return PrefixHit(len(ids), [(layer.keys, layer.values) for layer in cache.layers])
