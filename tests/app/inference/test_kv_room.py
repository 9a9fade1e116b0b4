"""kv_room.append: the same keys and values as transformers' concatenating update, written into room kept after
them, and never into a tensor something else holds."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from app.inference.kv_batch import KVBatch, select, truncate
from app.inference.kv_room import append


def _kv(rows: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(rows, 2, width, 4), torch.randn(rows, 2, width, 4)


def test_appends_equal_concatenation_and_reuse_one_buffer() -> None:
    ours, theirs = DynamicCache(), DynamicCache()
    for width in (5, 1, 1, 1, 3, 1):
        k, v = _kv(2, width)
        got = append(ours, 0, k, v)
        want = theirs.update(k, v, 0)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert ours.get_seq_length() == theirs.get_seq_length() == 12
    base = ours.layers[0].keys.data_ptr()
    for _ in range(2):  # room was kept: no new buffer
        append(ours, 0, *_kv(2, 1))
        assert ours.layers[0].keys.data_ptr() == base


def test_a_view_handed_out_is_never_written_to() -> None:
    cache = DynamicCache()
    append(cache, 0, *_kv(1, 6))
    append(cache, 0, *_kv(1, 1))
    snapshot = cache.layers[0].keys  # e.g. what a prefix-cache entry or a caller kept
    kept = snapshot.clone()
    cache.crop(-3)  # transformers' crop (7 -> 4 columns): a shorter view of the same buffer
    append(cache, 0, *_kv(1, 3))  # must not write columns 4..6 of the old buffer
    assert torch.equal(snapshot, kept)
    assert cache.get_seq_length() == 7


def test_the_batchs_own_edits_are_seen() -> None:
    cache = DynamicCache()
    append(cache, 0, *_kv(3, 4))
    append(cache, 0, *_kv(3, 1))
    mask = torch.ones(3, 5, dtype=torch.long)
    batch = select(KVBatch(cache=cache, attention_mask=mask), [0, 2])
    expected = batch.cache.layers[0].keys.clone()
    k, v = _kv(2, 1)
    keys, _ = append(batch.cache, 0, k, v)
    assert keys.shape == (2, 2, 6, 4) and torch.equal(keys[:, :, :5], expected) and torch.equal(keys[:, :, 5:], k)
    truncate(KVBatch(cache=batch.cache, attention_mask=torch.ones(2, 5, dtype=torch.long)))
    keys, _ = append(batch.cache, 0, *_kv(2, 1))
    assert keys.shape[2] == 6 and torch.equal(keys[:, :, :5], expected)
