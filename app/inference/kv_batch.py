"""KV-cache batch surgery for continuous batching: merge left-padded batches, drop finished rows.

The engine keeps one running batch in an ordinary transformers `DynamicCache` whose
layers hold `keys`/`values` of shape [batch, kv_heads, seq, head_dim], left-padded so
that every row's newest token sits in the last column (TGI's `CausalLMBatch` layout).
Both operations copy the whole cache, so the engine calls them only when the batch
changes, never on a plain decode step.
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


def _layer_tensors(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer; refuses layer kinds whose extra state a plain pad/select would corrupt."""
    out = []
    for i, layer in enumerate(cache.layers):
        if type(layer) is not DynamicLayer:  # sliding-window and indexed layers keep more than keys/values
            raise TypeError(
                f"continuous batching supports plain DynamicLayer caches; layer {i} is {type(layer).__name__}"
            )
        if not layer.is_initialized or layer.keys is None or layer.values is None or layer.keys.dim() != 4:
            raise ValueError(f"cache layer {i} is empty; prefill the batch before merging it")
        out.append((layer.keys, layer.values))
    return out


def _pad_left(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def merge(batches: list[KVBatch]) -> KVBatch:
    """Stack batches row-wise, left-padding caches and masks to the longest one (rows keep their order)."""
    if not batches:
        raise ValueError("merge needs at least one batch")
    if len(batches) == 1:
        return batches[0]
    length = max(b.length for b in batches)
    per_batch = [_layer_tensors(b.cache) for b in batches]
    n_layers = len(per_batch[0])
    if any(len(layers) != n_layers for layers in per_batch):
        raise ValueError("cannot merge caches with different numbers of layers")
    data = []
    for i in range(n_layers):
        keys = torch.cat([_pad_left(layers[i][0], length, 2) for layers in per_batch], dim=0)
        values = torch.cat([_pad_left(layers[i][1], length, 2) for layers in per_batch], dim=0)
        data.append((keys, values))
    mask = torch.cat([_pad_left(b.attention_mask, length, 1) for b in batches], dim=0)
    return KVBatch(cache=_cache_from(data), attention_mask=mask)


def select(batch: KVBatch, keep: list[int]) -> KVBatch:
    """Keep only rows `keep` (in that order) and cut left columns that are padding for every kept row."""
    if not keep:
        raise ValueError("select needs at least one row to keep; drop the batch instead")
    index = torch.tensor(keep, dtype=torch.long, device=batch.attention_mask.device)
    mask = batch.attention_mask.index_select(0, index)
    # Rows are left-padded, so the longest kept row decides how many leading columns are still needed.
    start = batch.length - int(mask.sum(dim=1).max().item())
    mask = mask[:, start:]
    data = []
    for keys, values in _layer_tensors(batch.cache):
        index = index.to(keys.device)
        data.append((keys.index_select(0, index)[:, :, start:, :], values.index_select(0, index)[:, :, start:, :]))
    return KVBatch(cache=_cache_from(data), attention_mask=mask)


def _cache_from(data: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A DynamicCache that adopts the given tensors without another copy."""
    cache = DynamicCache()
    cache.layers = []
    for keys, values in data:
        layer = DynamicLayer()
        layer.dtype, layer.device = keys.dtype, keys.device
        layer.keys, layer.values = keys, values
        layer.is_initialized = True
        cache.layers.append(layer)
    return cache
