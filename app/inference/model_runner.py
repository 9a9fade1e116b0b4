"""The forward passes the engine runs: a group's prompts prefilled in chunks, and one decode step of the batch.

Prefill works on a left-padded [rows, width] matrix of the group's token ids and runs it
`chunk` columns at a time (chunk = PREFILL_CHUNK_TOKENS // rows), so a long prompt never
becomes one giant forward pass; the engine interleaves the chunks with decode steps of the
running batch, so the rows already streaming keep going while a long prompt is read.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache

from app.inference.kv_batch import KVBatch
from app.inference.prefix_cache import PrefixHit
from app.inference.request_state import RequestState


class PrefillJob:
    """One admitted group being prefilled; `step()` runs the next chunk and returns the last logits when done.

    `hits` (one per row, or None) are prompt heads whose keys and values the prefix cache holds. Each row
    is laid out as [padding, cached head, padding, the rest], with every head ending at the same column
    and every rest ending at the last one: the cache starts as the heads, and only the rest is read, in
    chunks. Padding between a head and its rest is masked like left padding; position ids count only
    real tokens, so a row's positions are the same as without the cache. Without hits this is the usual
    left-padded matrix.
    """

    def __init__(
        self,
        rows: list[RequestState],
        *,
        pad_id: int,
        device: torch.device,
        chunk_tokens: int,
        hits: list[PrefixHit | None] | None = None,
    ) -> None:
        self.rows = rows
        contexts = [r.context_ids for r in rows]
        hits = hits or [None] * len(rows)
        heads = [0 if h is None else h.tokens for h in hits]
        head_width = max(heads)
        width = head_width + max(len(c) - h for c, h in zip(contexts, heads))
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (context, head) in enumerate(zip(contexts, heads)):
            ids[i, head_width - head : head_width] = torch.tensor(context[:head], dtype=torch.long)
            ids[i, width - (len(context) - head) :] = torch.tensor(context[head:], dtype=torch.long)
            mask[i, head_width - head : head_width] = 1
            mask[i, width - (len(context) - head) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self.ids, self.mask, self.positions = ids.to(device), mask.to(device), positions.to(device)
        self.chunk = max(1, chunk_tokens // len(rows))
        self.cached_tokens = heads
        self.done = head_width  # columns already in the cache
        self.cache = DynamicCache() if head_width == 0 else _cache_of_heads(hits, head_width, device)

    @property
    def width(self) -> int:
        return int(self.ids.shape[1])

    def context_read(self, index: int) -> int:
        """Tokens of row `index`'s context in the cache so far: its cached head, and the columns of the rest read."""
        head = self.cached_tokens[index]
        rest = len(self.rows[index].context_ids) - head
        return head + max(0, self.done - (self.width - rest))

    @property
    def cache_tokens(self) -> int:
        """Tokens its cache holds so far (rows x columns read)."""
        return len(self.rows) * self.done

    def step(self, model: Any) -> torch.Tensor | None:
        """Prefill the next chunk of columns; the [rows, vocab] logits of the last column once all are in."""
        start, end = self.done, min(self.done + self.chunk, self.width)
        out = model(
            input_ids=self.ids[:, start:end],
            attention_mask=self.mask[:, :end],
            position_ids=self.positions[:, start:end],
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache = out.past_key_values
        self.done = end
        if end < self.width:
            return None
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits

    def batch(self) -> KVBatch:
        return KVBatch(cache=self.cache, attention_mask=self.mask)

    def row_kv(self, index: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Row `index`'s keys and values per layer, its tokens only, in order (copies)."""
        columns = self.mask[index].nonzero().squeeze(1)
        return [
            (
                layer.keys[index : index + 1].index_select(2, columns),
                layer.values[index : index + 1].index_select(2, columns),
            )
            for layer in self.cache.layers
        ]


def _cache_of_heads(hits: list[PrefixHit | None], head_width: int, device: torch.device) -> DynamicCache:
    """A cache `head_width` columns wide: each row's cached head right-aligned in it, zeros over the padding."""
    some = next(h for h in hits if h is not None)
    layers = []
    for layer, (k0, v0) in enumerate(some.layers):
        keys = k0.new_zeros((len(hits), k0.shape[1], head_width, k0.shape[3]), device=device)
        values = v0.new_zeros((len(hits), v0.shape[1], head_width, v0.shape[3]), device=device)
        for i, hit in enumerate(hits):
            if hit is not None:
                keys[i, :, head_width - hit.tokens :] = hit.layers[layer][0][0]
                values[i, :, head_width - hit.tokens :] = hit.layers[layer][1][0]
        layers.append((keys, values))
    return DynamicCache(layers)


def decode(model: Any, batch: KVBatch, rows: list[RequestState], device: torch.device) -> tuple[torch.Tensor, KVBatch]:
    """Feed every row its newest token; returns the [rows, vocab] logits and the batch one column longer."""
    last = torch.tensor([[r.generated[-1]] for r in rows], dtype=torch.long, device=device)
    positions = torch.tensor([[r.position] for r in rows], dtype=torch.long, device=device)
    mask = torch.cat([batch.attention_mask, batch.attention_mask.new_ones((len(rows), 1))], dim=1)
    out = model(
        input_ids=last, attention_mask=mask, position_ids=positions, past_key_values=batch.cache, use_cache=True
    )
    return out.logits[:, -1, :], KVBatch(cache=out.past_key_values, attention_mask=mask)
