"""Appending a decode step's keys and values to a transformers DynamicCache without copying what it holds.

transformers' DynamicLayer.update concatenates: every step copies each layer's whole cache, which at 32 rows was a
fifth of a decode step. `append` keeps each layer's keys and values as views of buffers with room after them, and a
step writes its columns into that room. A buffer is reallocated, with a quarter of its length (at least
HEADROOM_COLUMNS) to spare, only when the room runs out or something else has set the layer's tensors.

Anything else that sets a layer's keys or values (the batch's merge, select and truncate in kv_batch.py, a prefix
hit, transformers' own update or crop) replaces the view `append` left there, and the next append then copies into
a new buffer. So a tensor handed out earlier (a prefix-cache entry, a cropped cache) is never written to.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

HEADROOM_COLUMNS = 16
_ROOM = "_clawbot_room"  # on a DynamicLayer: (keys buffer, values buffer, keys view, values view) it last set


def append(cache: DynamicCache, index: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cache.update(k, v, index): layer `index`'s keys and values with k and v ([rows, heads, width, dim]) after them."""
    layers = cache.layers
    if index >= len(layers) or not layers[index].is_initialized:
        keys, values = cache.update(k, v, index)  # the layer's first columns: transformers creates it
        return keys, values
    width = k.shape[2]
    kb, vb, held = reserve(cache, index, width)
    kb[:, :, held : held + width].copy_(k)
    vb[:, :, held : held + width].copy_(v)
    return commit(cache, index, kb, vb, held + width)


def reserve(cache: DynamicCache, index: int, width: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Buffers for initialized layer `index` with room for `width` more columns: (keys, values, columns held). The
    held columns are already in them; write the new ones after, then `commit`."""
    layer = cache.layers[index]
    keys, values = layer.keys, layer.values
    held = keys.shape[2]
    room = getattr(layer, _ROOM, None)
    if room is not None and room[2] is keys and room[3] is values and room[0].shape[2] >= held + width:
        return room[0], room[1], held
    size = held + width
    columns = size + max(HEADROOM_COLUMNS, size // 4)
    kb = keys.new_empty((keys.shape[0], keys.shape[1], columns, keys.shape[3]))
    vb = values.new_empty((values.shape[0], values.shape[1], columns, values.shape[3]))
    kb[:, :, :held].copy_(keys)
    vb[:, :, :held].copy_(values)
    return kb, vb, held


def commit(
    cache: DynamicCache, index: int, kb: torch.Tensor, vb: torch.Tensor, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer `index` now holds the first `length` columns of the buffers `reserve` gave."""
    layer = cache.layers[index]
    layer.keys, layer.values = kb[:, :, :length], vb[:, :, :length]
    setattr(layer, _ROOM, (kb, vb, layer.keys, layer.values))
    return layer.keys, layer.values
