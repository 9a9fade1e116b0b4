"""KV-cache batch surgery for continuous batching: merge a new group in, drop finished rows, undo a failed step.

The engine keeps one running batch in an ordinary transformers `DynamicCache` whose
layers hold `keys`/`values` of shape [batch, kv_heads, seq, head_dim], left-padded so
that every row's newest token sits in the last column (TGI's `CausalLMBatch` layout).

Memory: `merge` works one layer at a time and drops each old layer as soon as its merged
copy exists, so the peak is the two caches plus one merged layer, never two whole copies.
`select` compacts the kept rows inside the existing tensors and allocates nothing; the
unused tail is released when the next decode step grows the layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


@dataclass
class KVBatch:
    """A running batch: its cache and the [batch, seq] attention mask (0 = left padding) that matches it."""

    cache: DynamicCache
    attention_mask: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.attention_mask.shape[1])

    @property
    def rows(self) -> int:
        return int(self.attention_mask.shape[0])


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The cache's layers; refuses layer kinds whose extra state a plain pad/select would corrupt."""
    out = []
    for i, layer in enumerate(cache.layers):
        if type(layer) is not DynamicLayer:  # sliding-window and indexed layers keep more than keys/values
            raise TypeError(
                f"continuous batching supports plain DynamicLayer caches; layer {i} is {type(layer).__name__}"
            )
        if not layer.is_initialized or layer.keys is None or layer.values is None or layer.keys.dim() != 4:
            raise ValueError(f"cache layer {i} is empty; prefill the batch before merging it")
        out.append(layer)
    return out


def _pad_left(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _stacked(top: torch.Tensor, bottom: torch.Tensor, length: int) -> torch.Tensor:
    """[top; bottom] along rows, each left-padded with zeros to `length` columns, in one allocation."""
    n_top = top.shape[0]
    out = top.new_empty((n_top + bottom.shape[0], top.shape[1], length, top.shape[3]))
    # Padding must be zeros, not whatever the allocator left: masked positions still meet the values in a matmul.
    out[:n_top, :, : length - top.shape[2]].zero_()
    out[n_top:, :, : length - bottom.shape[2]].zero_()
    out[:n_top, :, length - top.shape[2] :].copy_(top)
    out[n_top:, :, length - bottom.shape[2] :].copy_(bottom)
    return out


def merge(running: KVBatch, fresh: KVBatch) -> KVBatch:
    """Stack `fresh`'s rows under `running`'s, left-padding both to the longer one; takes over `running`'s cache.

    Layer by layer: each merged layer replaces the old one before the next is built, and `fresh`'s layer is
    dropped with it. If an allocation fails part-way (out of memory), the layers already merged are turned back
    into views of `running`'s rows, so `running` stays a valid batch, and the error is raised.
    """
    old_layers, new_layers = _layers(running.cache), _layers(fresh.cache)
    if len(old_layers) != len(new_layers):
        raise ValueError("cannot merge caches with different numbers of layers")
    length = max(running.length, fresh.length)
    n_old, old_len = running.rows, running.length
    done = 0
    try:
        for old, new in zip(old_layers, new_layers):
            keys = _stacked(old.keys, new.keys, length)
            values = _stacked(old.values, new.values, length)
            old.keys, old.values = keys, values
            new.keys = new.values = None
            done += 1
    except BaseException:
        for layer in old_layers[:done]:
            layer.keys = layer.keys[:n_old, :, length - old_len :]
            layer.values = layer.values[:n_old, :, length - old_len :]
        raise
    mask = torch.cat([_pad_left(running.attention_mask, length, 1), _pad_left(fresh.attention_mask, length, 1)], dim=0)
    return KVBatch(cache=running.cache, attention_mask=mask)


def select(batch: KVBatch, keep: list[int]) -> KVBatch:
    """Keep only rows `keep` (ascending) and cut left columns that are padding for every kept row; in place.

    Kept rows are copied down over dropped ones inside the same tensors (row keep[i] >= i, so nothing is
    overwritten before it is read), and the result is a view: no allocation, so it cannot run out of memory.
    """
    if not keep:
        raise ValueError("select needs at least one row to keep; drop the batch instead")
    if any(b <= a for a, b in zip(keep, keep[1:])):
        raise ValueError(f"select keeps rows in ascending order, got {keep}")
    index = torch.tensor(keep, dtype=torch.long, device=batch.attention_mask.device)
    mask = batch.attention_mask.index_select(0, index)
    # Leading columns that are padding for every kept row can go. A row may have masked columns between a
    # cached prompt head and the rest (model_runner.PrefillJob), so count from each row's first real column.
    start = int(mask.argmax(dim=1).min().item())
    moves = [(dst, src) for dst, src in enumerate(keep) if dst != src]
    for layer in _layers(batch.cache):
        for tensor in (layer.keys, layer.values):
            for dst, src in moves:
                tensor[dst].copy_(tensor[src])
        layer.keys = layer.keys[: len(keep), :, start:]
        layer.values = layer.values[: len(keep), :, start:]
    return KVBatch(cache=batch.cache, attention_mask=mask[:, start:])


def truncate(batch: KVBatch) -> None:
    """Cut columns a failed forward pass appended to some layers, so every layer matches the mask again."""
    for layer in _layers(batch.cache):
        if layer.keys.shape[2] > batch.length:
            layer.keys = layer.keys[:, :, : batch.length]
        if layer.values.shape[2] > batch.length:
            layer.values = layer.values[:, :, : batch.length]
