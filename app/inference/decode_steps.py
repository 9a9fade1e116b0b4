"""The steps of a lean llama layer around its matmuls, for each kind of quantized weight (app/inference/lean_llama.py).

A layer is: q/k/v from the normed residual stream, rotary on q and k, attention, the output projection added to the
stream, then gate/up from the normed stream and the down projection of silu(gate) * up added to it. Around the
four matmuls that is a dozen small ops, each several microseconds of dispatch in one stream's decode step.

- `BlockSteps`, for `BlockLinear` weights (ClawBot's AVX2 kernel), calls one C++ op per step
  (app/inference/kernels/decode_ops.cpp): norm and matmul, matmul and residual, silu-gate, matmul and residual,
  rotary in place. Everything is fp32, as the kernel computes. Its `decode` runs a whole decode step of the
  layers, attention included, as one op (app/inference/kernels/decode_layers.cpp).
- `TorchSteps`, for `Int4Linear` weights (torch's int4 kernels: CUDA, or a CPU without AVX2), does the same with
  torch ops; what enters a matmul is the kernel dtype (bf16), the residual stream stays in the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from app.inference import kernels
from app.inference.block_linear import BlockLinear
from app.inference.int4_linear import QuantizedLinear


@dataclass(frozen=True)
class Stack:
    """A model's layers as decode_layers takes them: six tensors and four (format, rows) pairs a layer."""

    weights: list[torch.Tensor]
    formats: list[int]
    sizes: list[int]


@dataclass(frozen=True)
class Heads:
    """The attention's shape and the norms' epsilon."""

    heads: int
    kv_heads: int
    head_dim: int
    scaling: float
    eps: float


class BlockSteps:
    """One C++ op per step, fp32 throughout."""

    def __init__(self) -> None:
        self.ops: Any = kernels.ops()
        self.dtype = torch.float32  # the residual stream, keys and values
        self.qkv_dtype = torch.float32

    def norm(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.detach().float().contiguous()

    def normed(self, linear: Any, x: torch.Tensor, norm: torch.Tensor, eps: float) -> torch.Tensor:
        return self.ops.mm_normed(x, linear.blocks, linear.format, linear.out_features, norm, eps)

    def residual(self, linear: Any, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.ops.mm_residual(x.contiguous(), linear.blocks, linear.format, linear.out_features, residual)

    def gated(self, linear: Any, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.ops.mm_gated(x, linear.blocks, linear.format, linear.out_features, residual)

    def rope(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, head_dim: int) -> None:
        self.ops.rope_(qkv, cos, sin, heads, head_dim)

    def stack(self, layers: list[Any]) -> Stack:
        """What `decode` passes for these layers (lean_llama's _Layer), flattened once."""
        weights: list[torch.Tensor] = []
        formats: list[int] = []
        sizes: list[int] = []
        for layer in layers:
            weights += [
                layer.norm1,
                layer.qkv.blocks,
                layer.out.blocks,
                layer.norm2,
                layer.gate_up.blocks,
                layer.down.blocks,
            ]
            for linear in (layer.qkv, layer.out, layer.gate_up, layer.down):
                formats.append(linear.format)
                sizes.append(linear.out_features)
        return Stack(weights, formats, sizes)

    def decode(
        self,
        stack: Stack,
        h: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        shape: Heads,
        cache: tuple[list[torch.Tensor], list[torch.Tensor], int],
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Every layer of a decode step (one new token a row) in one C++ op (kernels/decode_layers.cpp): h after the
        last layer. cache: each layer's key and value buffers from kv_room.reserve, and the columns they hold."""
        keys, values, held = cache
        out: torch.Tensor = self.ops.decode_layers(
            h,
            stack.weights,
            stack.formats,
            stack.sizes,
            shape.eps,
            rope[0],
            rope[1],
            shape.heads,
            shape.kv_heads,
            shape.head_dim,
            keys,
            values,
            held,
            mask,
            shape.scaling,
        )
        return out


class TorchSteps:
    """The same steps in torch ops, around torch's int4 kernels computing in `kernel_dtype`."""

    def __init__(self, kernel_dtype: torch.dtype, dtype: torch.dtype) -> None:
        self.kernel_dtype = kernel_dtype
        self.dtype = dtype
        self.qkv_dtype = kernel_dtype  # q, k and v come out of the kernel in its dtype

    def norm(self, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def normed(self, linear: Any, x: torch.Tensor, norm: torch.Tensor, eps: float) -> torch.Tensor:
        out: torch.Tensor = linear.mm(F.rms_norm(x, (x.shape[-1],), norm, eps).to(self.kernel_dtype))
        return out

    def residual(self, linear: Any, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return residual + linear.mm(x.to(self.kernel_dtype))

    def gated(self, linear: Any, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return residual + linear.mm(F.silu(gate) * up)

    def rope(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, head_dim: int) -> None:
        """q and k together, as one multiply-add: x cos + rotate_half(x) sin, written back into qkv."""
        x = qkv.view(qkv.shape[0], -1, head_dim)
        qk = x[:, :heads]
        half = head_dim // 2
        rotated = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)
        x[:, :heads] = torch.addcmul(qk * cos[:, None], rotated, sin[:, None])


def steps_for(head: QuantizedLinear, dtype: torch.dtype) -> BlockSteps | TorchSteps:
    """The steps for a model whose output head (and so every fused Linear) is `head`; `dtype` is the model's."""
    if isinstance(head, BlockLinear):
        return BlockSteps()
    return TorchSteps(head.kernel_dtype, dtype)
