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
from app.inference.requests import Row


class PrefillJob:
    """One admitted group being prefilled; `step()` runs the next chunk and returns the last logits when done."""

    def __init__(self, rows: list[Row], *, pad_id: int, device: torch.device, chunk_tokens: int) -> None:
        self.rows = rows
        contexts = [r.context_ids for r in rows]
        width = max(len(c) for c in contexts)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, context in enumerate(contexts):
            ids[i, width - len(context):] = torch.tensor(context, dtype=torch.long)
            mask[i, width - len(context):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self.ids, self.mask, self.positions = ids.to(device), mask.to(device), positions.to(device)
        self.chunk = max(1, chunk_tokens // len(rows))
        self.cache = DynamicCache()
        self.done = 0  # columns already in the cache

    @property
    def width(self) -> int:
        return int(self.ids.shape[1])

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


def decode(model: Any, batch: KVBatch, rows: list[Row], device: torch.device) -> tuple[torch.Tensor, KVBatch]:
    """Feed every row its newest token; returns the [rows, vocab] logits and the batch one column longer."""
    last = torch.tensor([[r.generated[-1]] for r in rows], dtype=torch.long, device=device)
    positions = torch.tensor([[r.position] for r in rows], dtype=torch.long, device=device)
    mask = torch.cat([batch.attention_mask, batch.attention_mask.new_ones((len(rows), 1))], dim=1)
    out = model(input_ids=last, attention_mask=mask, position_ids=positions, past_key_values=batch.cache, use_cache=True)
    return out.logits[:, -1, :], KVBatch(cache=out.past_key_values, attention_mask=mask)
