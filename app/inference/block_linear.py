"""Linear layers on a GGUF's own blocks, computed by ClawBot's AVX2 kernel (app/inference/kernels/gguf_cpu.cpp).

A `BlockLinear` keeps each weight row as blocks of 32: a scale d, an offset m and 32 codes, with w = d * q + m
(`CodeBlocks`, app/inference/gguf_blocks.py). The codes are the file's own, byte for byte; d and m are the file's
fp16 constants where they are fp16 numbers (Q4_0's d and -8d, Q4_1's d and m, Q8_0's d) and fp32 where the format
makes a finer value (Q4_K's d * sc and dmin * m). So a Q4_1 layer holds exactly the file's 20 bytes a block.

The kernel dequantizes each block in registers exactly as the gguf package does and multiplies it with fp32
activations, so a layer computes x @ W.T with the file's dequantized W to fp32 rounding: nothing is rounded a second
time (torch's int4 kernels want bf16 constants and activations on x86 and CUDA, which drops three bits of every fp16
scale). It unpacks each block once for up to all the input rows of a call, which is what makes a batched decode
step cheap: docs/guides/quantization.md has the figures.

`dequantize()` and `rows()` give the exact weights d * q + m: a tied embedding table read from the output head,
and the tests.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from app.inference import kernels
from app.inference.gguf_blocks import GROUP, CodeBlocks

# Block formats, as the kernel numbers them: 4- or 8-bit codes, fp16 or fp32 constants; Q8_PAIR has two fp32 scales
# a block, one per 16 weights (Q6_K).
Q4_HALF, Q4_FLOAT, Q8_HALF, Q8_FLOAT, Q8_PAIR = 0, 1, 2, 3, 4
BLOCK_BYTES = {Q4_HALF: 20, Q4_FLOAT: 24, Q8_HALF: 36, Q8_FLOAT: 40, Q8_PAIR: 44}
FORMAT_NAMES = {
    Q4_HALF: "q4 fp16",
    Q4_FLOAT: "q4 fp32",
    Q8_HALF: "q8 fp16",
    Q8_FLOAT: "q8 fp32",
    Q8_PAIR: "q8 fp32, a scale per 16",
}


def _fp16_exact(values: np.ndarray) -> bool:
    with np.errstate(over="ignore"):
        return bool(np.array_equal(values.astype(np.float16).astype(np.float32), values))


def _format(byte: bool, half: bool, pair: bool = False) -> int:
    if pair:
        return Q8_PAIR
    return (Q8_HALF if half else Q8_FLOAT) if byte else (Q4_HALF if half else Q4_FLOAT)


def pack_blocks(blocks: CodeBlocks, half: bool | None = None) -> tuple[np.ndarray, int]:
    """CodeBlocks -> (rows [N, K / 32 * block bytes] uint8, format). A row is every block's codes, then every block's
    d (a pair's two side by side), then every block's m (gguf_layout.h says why). `half` forces fp16 (must be exact)
    or fp32 constants; a pair's are fp32."""
    rows = blocks.codes.shape[0]
    if blocks.byte:
        codes = blocks.codes.astype(np.int8).view(np.uint8)
    else:
        codes = (blocks.codes[..., :16] | (blocks.codes[..., 16:] << 4)).astype(np.uint8)
    if blocks.pair:
        half = False
    elif half is None:
        half = _fp16_exact(blocks.d) and _fp16_exact(blocks.m)
    kind = np.float16 if half else np.float32
    parts = [
        codes.reshape(rows, -1),
        np.ascontiguousarray(blocks.d.astype(kind)).view(np.uint8).reshape(rows, -1),
        np.ascontiguousarray(blocks.m.astype(kind)).view(np.uint8),
    ]
    return np.ascontiguousarray(np.concatenate(parts, axis=1)), _format(blocks.byte, half, blocks.pair)


class BlockLinear(nn.Module):
    """The same inputs and outputs as the nn.Linear it replaces; the weight is GGUF-style blocks (see module doc)."""

    kernel_dtype = torch.float32  # what the kernel takes and returns

    def __init__(
        self, in_features: int, out_features: int, fmt: int, bias: torch.Tensor | None = None, *, empty: bool = False
    ) -> None:
        super().__init__()
        if in_features % GROUP:
            raise ValueError(f"a block weight needs whole groups of {GROUP} inputs, got {in_features}")
        self.in_features, self.out_features, self.format = in_features, out_features, fmt
        row_bytes = in_features // GROUP * BLOCK_BYTES[fmt]
        device = "meta" if empty else "cpu"
        self.register_buffer("blocks", torch.empty((out_features, row_bytes), dtype=torch.uint8, device=device))
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_code_blocks(cls, chunks: Iterable[CodeBlocks], bias: torch.Tensor | None = None) -> BlockLinear:
        """One layer from row chunks of one weight; fp16 constants only where every chunk's are exact in fp16."""
        chunks = list(chunks)
        half = all(_fp16_exact(c.d) and _fp16_exact(c.m) for c in chunks)
        if len({(c.byte, c.pair) for c in chunks}) > 1:
            raise ValueError("the row chunks of one weight mix block forms")
        parts = [pack_blocks(c, half) for c in chunks]
        rows = np.concatenate([p for p, _ in parts]) if len(parts) > 1 else parts[0][0]
        fmt = parts[0][1]
        layer = cls(rows.shape[1] // BLOCK_BYTES[fmt] * GROUP, rows.shape[0], fmt, bias, empty=True)
        layer.blocks = torch.from_numpy(rows)
        return layer

    def mm(self, x: torch.Tensor) -> torch.Tensor:
        """x [rows, in_features] fp32 -> [rows, out_features] fp32, without bias (the hot path)."""
        return kernels.ops().mm(x, self.blocks, self.format, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = self.mm(flat if flat.dtype == torch.float32 else flat.float())
        if self.bias is not None:
            out = out + self.bias
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def dequantize(self) -> torch.Tensor:
        """The whole weight [out_features, in_features] in fp32: d * q + m, exactly."""
        return kernels.ops().dequantize(self.blocks, self.format, self.out_features, self.in_features)

    def rows(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows `ids` of the weight, dequantized: [*ids.shape, in_features] (an embedding lookup on a tied head)."""
        flat = ids.reshape(-1)
        picked = self.blocks.index_select(0, flat).contiguous()
        w = kernels.ops().dequantize(picked, self.format, flat.numel(), self.in_features)
        return w.to(dtype).reshape(*ids.shape, self.in_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"GGUF blocks of {GROUP} ({FORMAT_NAMES[self.format]}), AVX2 kernel"
        )


def _widen(rows: torch.Tensor, fmt: int) -> torch.Tensor:
    """fp16 constants -> fp32 (the same values), so the parts of a fused weight share a format."""
    if fmt in (Q4_FLOAT, Q8_FLOAT, Q8_PAIR):
        return rows
    groups = rows.shape[1] // BLOCK_BYTES[fmt]
    code_bytes = groups * (BLOCK_BYTES[fmt] - 4)
    const = rows[:, code_bytes:].contiguous().view(torch.float16).float().view(torch.uint8)
    return torch.cat([rows[:, :code_bytes], const], dim=1)


def fuse_blocks(parts: list[BlockLinear]) -> BlockLinear:
    """One BlockLinear whose outputs are the parts' side by side: rows are independent, so this is a concatenation."""
    first = parts[0]
    if any(p.in_features != first.in_features or p.bias is not None for p in parts):
        raise ValueError("only block linears with the same input width, without bias, can be fused")
    byte = {p.format in (Q8_HALF, Q8_FLOAT, Q8_PAIR) for p in parts}
    pair = {p.format == Q8_PAIR for p in parts}
    if len(byte) > 1 or len(pair) > 1:
        raise ValueError("block weights of 4-bit and 8-bit codes, or of one and two scales a block, cannot be fused")
    half = all(p.format in (Q4_HALF, Q8_HALF) for p in parts)
    fmt = _format(byte.pop(), half, pair.pop())
    out = BlockLinear(first.in_features, sum(p.out_features for p in parts), fmt, empty=True)
    out.blocks = torch.cat([p.blocks if half else _widen(p.blocks, p.format) for p in parts])
    return out
