"""A lean forward pass for llama-family models on int4 weights: fewer, larger ops per token than transformers'.

One stream's decode step on a CPU is mostly dispatch: the matmuls of SmolLM2-135M read ~100 MB a token, the rest
is hundreds of small ops, each a few microseconds of Python and dispatch. transformers' Llama forward spends them
on things a served decode step does not need (mask construction through several helpers, per-projection calls,
dtype round trips, output bookkeeping). This forward computes the same function with the fewest ops it can:

- q/k/v and gate/up are one kernel call each (the fused weights gguf_model builds), 4 calls a layer;
- the steps around them (norm, rotary on q and k together, residual adds, silu-gate) are folded into those calls:
  on ClawBot's block kernel each is one C++ op, fp32 throughout; on torch's int4 kernels, torch ops with bf16 at
  the matmuls and the residual stream in the model's dtype (app/inference/decode_steps.py);
- keys and values are appended into room kept after them, not concatenated (app/inference/kv_room.py);
- the attention mask is built once per step, not once per layer.

It keeps transformers' calling convention (input_ids, attention_mask, position_ids, a DynamicCache, logits_to_keep)
so the engine, `generate` and the prefix cache use it unchanged; anything it does not cover (embeddings passed in,
attentions or hidden states asked for, another cache type) goes to the model's own forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

from app.inference.decode_steps import BlockSteps, Heads, Stack, steps_for
from app.inference.int4_linear import QUANTIZED, FusedLinears, QuantizedLinear
from app.inference.kv_room import append, commit, reserve

SUPPORTED = ("llama",)
_PASS_THROUGH = {"return_dict", "cache_position", "output_attentions", "output_hidden_states"}


@dataclass(frozen=True)
class _Layer:
    norm1: torch.Tensor
    qkv: QuantizedLinear
    out: QuantizedLinear
    norm2: torch.Tensor
    gate_up: QuantizedLinear
    down: QuantizedLinear


def _fused(module: nn.Module, name: str) -> QuantizedLinear | None:
    owner = getattr(module, name, None)
    return owner.fused if isinstance(owner, FusedLinears) else None


def _installed_fused(module: nn.Module, name: str) -> QuantizedLinear:
    """The fused weights that can_install found (LeanLlama is built only after it said yes)."""
    fused = _fused(module, name)
    if fused is None:
        raise ValueError(f"{name} is not fused: LeanLlama needs a model that can_install accepts")
    return fused


def can_install(model: nn.Module) -> bool:
    """Whether every layer has the fused int4 weights this forward calls, and no part it does not know."""
    config = model.config
    if getattr(config, "model_type", None) not in SUPPORTED or getattr(model, "lm_head", None) is None:
        return False
    if not isinstance(model.lm_head, QUANTIZED) or model.lm_head.bias is not None:
        return False
    kind = type(model.lm_head)  # one kind of weight throughout: the head's decides the steps
    for layer in model.model.layers:
        parts = (
            _fused(layer.self_attn, "qkv_proj"),
            layer.self_attn.o_proj,
            _fused(layer.mlp, "gate_up_proj"),
            layer.mlp.down_proj,
        )
        if not all(type(p) is kind and p.bias is None for p in parts):
            return False
    rope = getattr(config, "rope_scaling", None) or {}
    return getattr(config, "hidden_act", "silu") == "silu" and rope.get("rope_type", "default") == "default"


class LeanLlama:
    """model.forward for a llama-family model whose Linears are int4 (see can_install)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.original = model.forward
        config = model.config
        inner = model.model
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.hidden = config.hidden_size
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or self.hidden // heads
        self.shape = Heads(heads, config.num_key_value_heads, head_dim, head_dim**-0.5, config.rms_norm_eps)
        self.steps = steps_for(model.lm_head, inner.norm.weight.dtype)
        norm = self.steps.norm
        self.layers = [
            _Layer(
                norm(layer.input_layernorm.weight),
                _installed_fused(layer.self_attn, "qkv_proj"),
                layer.self_attn.o_proj,
                norm(layer.post_attention_layernorm.weight),
                _installed_fused(layer.mlp, "gate_up_proj"),
                layer.mlp.down_proj,
            )
            for layer in inner.layers
        ]
        self.final_norm = norm(inner.norm.weight)
        self.head: QuantizedLinear = model.lm_head
        self.stack = self.steps.stack(self.layers) if isinstance(self.steps, BlockSteps) else None

    def __call__(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> Any:
        other = {k for k, v in kwargs.items() if v not in (None, False) and k not in _PASS_THROUGH}
        if (
            input_ids is None
            or inputs_embeds is not None
            or other
            or kwargs.get("output_attentions")
            or kwargs.get("output_hidden_states")
            or not isinstance(logits_to_keep, int)
            or (past_key_values is not None and not _plain(past_key_values))
        ):
            return self.original(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                inputs_embeds=inputs_embeds,
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
                **kwargs,
            )
        cache = past_key_values if past_key_values is not None else DynamicCache()
        with torch.inference_mode():
            logits = self._forward(
                input_ids, attention_mask, position_ids, cache, logits_to_keep, kwargs.get("cache_position")
            )
        return CausalLMOutputWithPast(logits=logits, past_key_values=cache)

    def _forward(
        self,
        ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        cache: DynamicCache,
        keep: int,
        cache_position: torch.Tensor | None,
    ) -> torch.Tensor:
        rows, width = ids.shape
        tokens = rows * width
        past = cache.get_seq_length()
        steps = self.steps
        if position_ids is None:
            start = int(cache_position[0]) if cache_position is not None else past
            position_ids = torch.arange(start, start + width, device=ids.device)[None].expand(rows, -1)
        h = self.embed(ids).to(steps.dtype).reshape(tokens, self.hidden)
        cos, sin = self.rotary(h, position_ids)  # [rows, width, head_dim]
        cos = cos.to(steps.qkv_dtype).reshape(tokens, -1).contiguous()
        sin = sin.to(steps.qkv_dtype).reshape(tokens, -1).contiguous()
        mask = _mask(attention_mask, rows, width, past, ids.device, steps.qkv_dtype)
        whole = width == 1 and past and len(cache.layers) == len(self.layers)
        if isinstance(steps, BlockSteps) and self.stack is not None and whole:
            h = self._decode(steps, self.stack, h, (cos, sin), cache, past, mask)
        else:
            h = self._layers(h, (cos, sin), cache, mask, rows, width)
        if keep:
            h = h.view(rows, width, self.hidden)[:, -keep:].reshape(-1, self.hidden)
        logits = steps.normed(self.head, h.contiguous(), self.final_norm, self.shape.eps)
        return logits.view(rows, h.shape[0] // rows, -1).to(steps.dtype)

    def _layers(
        self,
        h: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache: DynamicCache,
        mask: torch.Tensor | None,
        rows: int,
        width: int,
    ) -> torch.Tensor:
        """Layer by layer, a few ops each: prefill, and every step on torch's int4 kernels."""
        steps, tokens = self.steps, rows * width
        nq, nk, d, eps = self.shape.heads, self.shape.kv_heads, self.shape.head_dim, self.shape.eps
        for index, layer in enumerate(self.layers):
            qkv = steps.normed(layer.qkv, h, layer.norm1, eps)
            steps.rope(qkv, rope[0], rope[1], nq + nk, d)
            heads = qkv.view(rows, width, nq + 2 * nk, d).transpose(1, 2)
            k, v = append(cache, index, heads[:, nq : nq + nk], heads[:, nq + nk :])
            a = F.scaled_dot_product_attention(
                heads[:, :nq], k, v, attn_mask=mask, scale=self.shape.scaling, enable_gqa=nk != nq
            )
            h = steps.residual(layer.out, a.transpose(1, 2).reshape(tokens, nq * d), h)
            h = steps.gated(layer.down, steps.normed(layer.gate_up, h, layer.norm2, eps), h)
        return h

    def _decode(
        self,
        steps: BlockSteps,
        stack: Stack,
        h: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache: DynamicCache,
        past: int,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """A decode step on ClawBot's block kernel: every layer in one C++ op, its keys and values written into the
        room kv_room keeps after the cache."""
        rooms = [reserve(cache, index, 1) for index in range(len(self.layers))]
        keys, values = [room[0] for room in rooms], [room[1] for room in rooms]
        flat = None if mask is None else mask.reshape(h.shape[0], past + 1)
        h = steps.decode(stack, h, rope, self.shape, (keys, values, past), flat)
        for index, (kb, vb, _) in enumerate(rooms):
            commit(cache, index, kb, vb, past + 1)
        return h


def _plain(cache: Any) -> bool:
    return isinstance(cache, DynamicCache) and all(type(layer) is DynamicLayer for layer in cache.layers)


def _mask(
    attention_mask: torch.Tensor | None, rows: int, width: int, past: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor | None:
    """Additive [rows, 1, width, past + width] in `dtype` (0 or -inf): padding masked, causal within the new tokens.
    A query always sees itself, so a padding query (left padding) has one key and never a row of nothing, which
    would make NaNs. Additive once per step, because SDPA converts a boolean mask again in every layer."""
    if attention_mask is None:
        if width == 1:
            return None
        attention_mask = torch.ones((rows, past + width), dtype=torch.bool, device=device)
    keys = attention_mask.bool()[:, None, None, :]
    if width == 1:
        if bool(keys.all()):  # no padding anywhere (one stream, or rows of one length): no mask at all
            return None
        seen = keys
    else:
        columns = torch.arange(past + width, device=device)
        query_at = torch.arange(past, past + width, device=device)[:, None]
        seen = (keys & (columns <= query_at)) | (columns == query_at)
    return torch.zeros(seen.shape, dtype=dtype, device=device).masked_fill_(~seen, float("-inf"))


def install(model: nn.Module) -> bool:
    """Make `model(...)` run the lean forward where the model supports it; returns whether it did."""
    if not can_install(model):
        return False
    model.forward = LeanLlama(model)
    return True
