"""KV batch surgery: merging never holds two copies of the cache, a failed merge leaves a valid batch, select allocates nothing."""

from __future__ import annotations

import weakref

import pytest
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

import app.inference.kv_batch as kv
from app.inference.kv_batch import KVBatch, merge, select, truncate

LAYERS, HEADS, DIM = 6, 2, 8


def batch(rows: int, length: int, seed: int) -> KVBatch:
    """A left-padded batch whose row i holds length - i real tokens (the rest is padding)."""
    g = torch.Generator().manual_seed(seed)
    data = [
        (torch.randn(rows, HEADS, length, DIM, generator=g), torch.randn(rows, HEADS, length, DIM, generator=g))
        for _ in range(LAYERS)
    ]
    mask = torch.ones(rows, length, dtype=torch.long)
    for i in range(rows):
        mask[i, :i] = 0
    cache = DynamicCache()
    cache.layers = []
    for keys, values in data:
        layer = DynamicLayer()
        layer.update(keys, values)
        cache.layers.append(layer)
    return KVBatch(cache=cache, attention_mask=mask)


def snapshot(b: KVBatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys.clone(), layer.values.clone()) for layer in b.cache.layers]


def test_merge_stacks_rows_left_padded_and_keeps_the_running_cache_object() -> None:
    running, fresh = batch(3, 10, seed=1), batch(2, 14, seed=2)
    want_old, want_new = snapshot(running), snapshot(fresh)
    cache = running.cache
    merged = merge(running, fresh)
    assert merged.cache is cache
    assert merged.attention_mask.shape == (5, 14)
    assert merged.attention_mask[:3, :4].sum() == 0  # the shorter batch was padded on the left
    for layer, (old_k, old_v), (new_k, new_v) in zip(merged.cache.layers, want_old, want_new):
        assert layer.keys.shape == (5, HEADS, 14, DIM)
        assert torch.equal(layer.keys[:3, :, 4:], old_k) and torch.equal(layer.values[:3, :, 4:], old_v)
        assert torch.equal(layer.keys[3:], new_k) and torch.equal(layer.values[3:], new_v)
        assert not layer.keys[:3, :, :4].any()  # padding is zeros, never leftover memory


def test_merge_releases_each_old_layer_before_building_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    running, fresh = batch(4, 32, seed=3), batch(4, 32, seed=4)
    originals = [
        weakref.ref(t) for b in (running, fresh) for layer in b.cache.layers for t in (layer.keys, layer.values)
    ]
    per_layer = 4  # keys and values of the running and of the fresh batch
    alive_at_call: list[int] = []
    stacked = kv._stacked

    def watching(top: torch.Tensor, bottom: torch.Tensor, length: int) -> torch.Tensor:
        alive_at_call.append(sum(ref() is not None for ref in originals))
        return stacked(top, bottom, length)

    monkeypatch.setattr(kv, "_stacked", watching)
    merge(running, fresh)
    # Two calls per layer (keys, values). When layer i is merged, layers < i have dropped their originals:
    # the peak is the caches plus one merged layer, not two whole caches.
    total = LAYERS * per_layer
    assert alive_at_call[::2] == [total - i * per_layer for i in range(LAYERS)]
    assert all(ref() is None for ref in originals)


def test_a_merge_that_runs_out_of_memory_leaves_the_running_batch_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    running, fresh = batch(3, 10, seed=5), batch(2, 14, seed=6)
    want = snapshot(running)
    stacked, calls = kv._stacked, []

    def failing(top: torch.Tensor, bottom: torch.Tensor, length: int) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 7:  # layer 3's keys
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return stacked(top, bottom, length)

    monkeypatch.setattr(kv, "_stacked", failing)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        merge(running, fresh)
    assert running.attention_mask.shape == (3, 10)
    for layer, (k, v) in zip(running.cache.layers, want):
        assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)


def test_select_compacts_rows_in_place_and_trims_common_padding() -> None:
    b = batch(5, 12, seed=7)
    want = snapshot(b)
    pointers = [layer.keys.data_ptr() for layer in b.cache.layers]
    kept = select(b, [2, 4])
    # Rows 2 and 4 have 2 and 4 padding columns: the two leading columns are padding for both and go.
    assert kept.attention_mask.shape == (2, 10)
    for layer, pointer, (k, v) in zip(kept.cache.layers, pointers, want):
        assert layer.keys.untyped_storage().data_ptr() == pointer  # no new allocation
        assert torch.equal(layer.keys, k[[2, 4], :, 2:]) and torch.equal(layer.values, v[[2, 4], :, 2:])
    with pytest.raises(ValueError, match="ascending"):
        select(kept, [1, 0])


def test_truncate_undoes_the_column_a_failed_step_added_to_some_layers() -> None:
    b = batch(2, 6, seed=8)
    want = snapshot(b)
    for layer in b.cache.layers[:3]:  # the step failed inside layer 3
        layer.update(torch.randn(2, HEADS, 1, DIM), torch.randn(2, HEADS, 1, DIM))
    truncate(b)
    for layer, (k, v) in zip(b.cache.layers, want):
        assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)


def test_only_plain_dynamic_layers_are_merged() -> None:
    running = batch(1, 4, seed=9)
    empty = KVBatch(cache=DynamicCache(), attention_mask=torch.ones(1, 4, dtype=torch.long))
    empty.cache.layers = [type("Sliding", (DynamicLayer,), {})()]
    with pytest.raises(TypeError, match="plain DynamicLayer"):
        merge(running, empty)
