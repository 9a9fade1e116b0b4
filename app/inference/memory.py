"""How many KV-cache tokens the device can hold, and how to recognise running out of memory.

With KV_CACHE_TOKENS unset (0) the budget is derived: on CUDA from the memory free after the
model is loaded (a share of it, leaving room for activations), on CPU a fixed default.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger("clawbot.engine")

# Share of the free device memory the KV cache may take; the rest is for activations and the allocator's slack.
KV_MEMORY_FRACTION = 0.8
# On CPU the cache lives in host memory, which is rarely the limit: about 3 GB for the embedded model in fp32.
DEFAULT_CPU_KV_TOKENS = 65_536


def kv_bytes_per_token(model: Any) -> int:
    """Bytes one token adds to the KV cache: keys and values of every layer."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    element: int = torch.empty((), dtype=model.dtype).element_size()
    return 2 * int(text.num_hidden_layers) * kv_heads * head_dim * element


def kv_budget_tokens(model: Any, device: torch.device, configured: int) -> int:
    """The KV budget in tokens: `configured` when set, else derived from the device."""
    if configured > 0:
        return configured
    if device.type != "cuda":
        return DEFAULT_CPU_KV_TOKENS
    free, _ = torch.cuda.mem_get_info(device)
    per_token = kv_bytes_per_token(model)
    tokens = max(1, int(free * KV_MEMORY_FRACTION) // per_token)
    log.info(
        "KV budget derived from free device memory",
        extra={"free_bytes": free, "bytes_per_token": per_token, "kv_cache_tokens": tokens},
    )
    return tokens


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA allocator failure, or another backend's RuntimeError saying it ran out of memory."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def release_cached_memory(device: torch.device) -> None:
    """Hand the allocator's cached blocks back after an out-of-memory error, so a smaller retry can use them."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
