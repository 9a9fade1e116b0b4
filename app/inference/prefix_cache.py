"""KV reuse across requests for shared prompt prefixes: an LRU of per-prompt key/value tensors, bounded in tokens.

An agent gateway re-sends the same system prompt (and every earlier turn) with each request;
reading it again costs a full prefill. After a prompt is prefilled, the engine stores the keys
and values of its block-aligned head (`BLOCK_TOKENS`) here, one row, no padding. A later prompt
is looked up block by block through chained hashes, so it finds the longest cached head it
shares with any stored prompt, not only with one of exactly its length; its prefill then starts
after that head. At least one prompt token is always left to prefill: the first output token
needs its logits.

Keys and values are position-dependent (rotary embeddings), which is why only a *prefix* can be
reused: the same text at another position would have other keys. Greedy outputs with and without
the cache are the same (tests/app/inference/test_prefix_cache.py).

Scope: the engine stores and looks up under the API key's id. A shared head is reused only for the
key that sent it, so neither `cached_tokens` nor a faster first token tells one key what another
key's prompts begin with (the response cache is per key for the same reason).

Memory: the entries live on the model's device, at most `max_tokens` tokens in all (least
recently used first out). A stored prompt that extends an older entry replaces it, so a
conversation growing turn by turn holds one entry, not one per turn.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import torch

BLOCK_TOKENS = 64


@dataclass(eq=False)
class _Entry:
    tokens: int  # block-aligned length stored
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values of shape [1, kv_heads, tokens, head_dim]
    hashes: list[bytes]  # the chained hash at every block boundary, the last one its own key


@dataclass(frozen=True)
class PrefixHit:
    """A cached head of a prompt: `tokens` long; `layers` holds that many columns of keys and values per layer."""

    tokens: int
    layers: list[tuple[torch.Tensor, torch.Tensor]]


def block_hashes(ids: list[int], limit: int, block: int = BLOCK_TOKENS, scope: str = "") -> list[bytes]:
    """The chained hash after each whole block of `ids[:limit]`: element i covers the first (i + 1) * block ids.
    The chain starts from `scope`, so heads stored under one scope are never found under another."""
    out: list[bytes] = []
    digest = hashlib.blake2b(scope.encode(), digest_size=16).digest()
    for start in range(0, limit - block + 1, block):
        chunk = ",".join(map(str, ids[start : start + block])).encode()
        digest = hashlib.blake2b(digest + chunk, digest_size=16).digest()
        out.append(digest)
    return out


class PrefixCache:
    """LRU of prompt heads' KV; used by the engine's worker thread only (no locking)."""

    def __init__(self, max_tokens: int, block: int = BLOCK_TOKENS) -> None:
        if max_tokens < 0:
            raise ValueError(f"the prefix cache bound must be at least 0 tokens, got {max_tokens}")
        if block < 1:
            raise ValueError(f"the prefix cache block must be at least 1 token, got {block}")
        self.max_tokens = max_tokens
        self.block = block
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()  # by own key, least recently used first
        self._index: dict[bytes, _Entry] = {}  # any block boundary's hash -> an entry holding that head
        self.tokens = 0

    @property
    def enabled(self) -> bool:
        return self.max_tokens >= self.block

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ids: list[int], scope: str = "") -> PrefixHit | None:
        """The longest head of `ids` stored under `scope`, block-aligned, that leaves at least one id to prefill."""
        if not self.enabled:
            return None
        hashes = block_hashes(ids, len(ids) - 1, self.block, scope)
        for count in range(len(hashes), 0, -1):
            entry = self._index.get(hashes[count - 1])
            if entry is None:
                continue
            self._entries.move_to_end(entry.hashes[-1])
            n = count * self.block
            return PrefixHit(n, [(k[:, :, :n], v[:, :, :n]) for k, v in entry.layers])
        return None

    def store(self, ids: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]], scope: str = "") -> bool:
        """Keep the block-aligned head of `ids` under `scope`; `layers` are its keys/values ([1, heads, >= head,
        dim] each, column j holding ids[j]), copied. False when that head is cached already."""
        if not self.enabled:
            return False
        hashes = block_hashes(ids, min(len(ids), self.max_tokens), self.block, scope)
        if not hashes or hashes[-1] in self._index:
            if hashes:
                self._entries.move_to_end(self._index[hashes[-1]].hashes[-1])
            return False
        n = len(hashes) * self.block
        entry = _Entry(n, [(k[:, :, :n].clone(), v[:, :, :n].clone()) for k, v in layers], hashes)
        for h in hashes:  # entries this one extends are now redundant: it holds all they held
            older = self._index.get(h)
            if older is not None and older.hashes[-1] == h:
                self._drop(older)
        self.tokens += n
        while self.tokens > self.max_tokens and self._entries:
            self._drop(next(iter(self._entries.values())))
        self._entries[hashes[-1]] = entry
        for h in hashes:
            self._index[h] = entry
        return True

    def clear(self) -> None:
        self._entries.clear()
        self._index.clear()
        self.tokens = 0

    def _drop(self, entry: _Entry) -> None:
        del self._entries[entry.hashes[-1]]
        self.tokens -= entry.tokens
        for h in entry.hashes:
            if self._index.get(h) is entry:
                del self._index[h]
