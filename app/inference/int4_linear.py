"""Linear layers on GGUF's own 4-bit codes through torch's weight-only int4 kernels (CPU and CUDA).

An `Int4Linear` holds one weight as torch's packed int4 layout plus `scales_and_zeros` [groups, N, 2] and computes
x @ W.T with `torch._weight_int4pack_mm_for_cpu` on CPU or `torch._weight_int4pack_mm` on CUDA, the kernels
torchao's `int4_weight_only` and gpt-fast's `WeightOnlyInt4Linear` use. The codes come from the GGUF unchanged
(app/inference/gguf_blocks.py); a weight stored as two planes of 4 bits (Q8_0, Q5_x) is one kernel call over the
input repeated twice along K, since [x, x] @ [W_hi, W_lo].T = x @ (W_hi + W_lo).T.

The kernels compute in bf16 on x86 and CUDA: torch's CPU kernel is vectorised (AVX2, AVX-512) for bf16 only and
falls back to a scalar loop for fp32 and fp16, and CUDA's tinygemm kernel takes bf16. So activations are cast to
bf16 at the kernel and the output cast back to the caller's dtype; `kernel_dtype=torch.float32` keeps everything
fp32 (exact to fp32 rounding, and slow on x86), which the unit tests use to show the codes are carried exactly.

`Int4Embedding` reads rows of the same packed weight for a tied embedding table (the output head is the table),
so the table is stored once, in 4 bits, as in the GGUF.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from app.inference.block_linear import BlockLinear
from app.inference.gguf_blocks import GROUP, Int4Groups

# Rows packed per conversion call on CPU: a multiple of every kernel block (32 or 64 rows), and small enough that
# the int32 copy the packing op wants stays a few MB.
PACK_ROWS = 4096
CUDA_INNER_K_TILES = (8, 4, 2)
# From this many input rows on (prefill chunks) the CPU path dequantizes the weight and runs a dense fp32 matmul: the
# int4 kernel dequantizes the whole weight again for every 4 rows (a 1536x576 weight, 1 thread: 5.8 ms against 4.6 ms
# at 128 rows, 25 ms against 12.5 ms at 512; 1.4 ms against 3.0 ms at 32, where the kernel stays).
DEQUANTIZE_ROWS = 96


@dataclass(frozen=True)
class CpuPackLayout:
    """How `_convert_weight_to_int4pack_for_cpu` lays out rows, which depends on the CPU capability torch runs.

    Rows come in blocks of `block_n`; a full block stores, for each k, block_n / 2 bytes where byte c holds row c
    (low nibble) and row c + block_n / 2 (high nibble). A last, partial block, and every block where `interleaved`
    is false, pairs neighbouring rows instead: byte c holds rows 2c and 2c + 1.
    """

    block_n: int
    interleaved: bool


def cpu_pack_layout() -> CpuPackLayout:
    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        return CpuPackLayout(64, True)
    if capability == "AVX2":
        return CpuPackLayout(32, True)
    return CpuPackLayout(32, False)


def can_pack(out_features: int, in_features: int) -> bool:
    """Shapes the int4 kernels take: whole groups of 32 along K, output rows in multiples of 16 (CPU) and 8 (CUDA)."""
    return in_features % GROUP == 0 and out_features % 16 == 0


def cuda_inner_k_tiles(in_features: int) -> int:
    """The largest tile count tinygemm accepts for this K (K must be a multiple of 16 * tiles)."""
    for tiles in CUDA_INNER_K_TILES:
        if in_features % (16 * tiles) == 0:
            return tiles
    raise ValueError(f"the CUDA int4 kernel needs K divisible by 32, got {in_features}")


def nibble_pairs(codes: torch.Tensor) -> torch.Tensor:
    """[N, K] codes -> [N, K/2] uint8 with element 2j in the high nibble: the input CUDA's packing op takes."""
    codes = codes.to(torch.uint8)
    return (codes[:, ::2] << 4) | codes[:, 1::2]


def _pack_cpu(codes: np.ndarray) -> torch.Tensor:
    out = []
    for start in range(0, codes.shape[0], PACK_ROWS):
        chunk = torch.from_numpy(np.ascontiguousarray(codes[start : start + PACK_ROWS])).to(torch.int32)
        out.append(torch._convert_weight_to_int4pack_for_cpu(chunk, 1))
    return torch.cat(out) if len(out) > 1 else out[0]


class Int4Linear(nn.Module):
    """The same inputs and outputs as the nn.Linear it replaces; the weight is int4 codes with group scales and zeros."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        planes: int,
        device: torch.device,
        kernel_dtype: torch.dtype = torch.bfloat16,
        bias: torch.Tensor | None = None,
        *,
        empty: bool = False,
    ) -> None:
        """Buffers shaped for `device`'s kernel; `empty` puts them on the meta device (to be assigned later)."""
        super().__init__()
        self.in_features, self.out_features, self.planes = in_features, out_features, planes
        self.kernel_dtype = kernel_dtype
        width = planes * in_features
        if device.type == "cuda":
            tiles = cuda_inner_k_tiles(width)
            shape: tuple[int, ...] = (out_features // 8, width // (tiles * 16), 32, tiles // 2)
            packed = torch.empty(shape, dtype=torch.int32, device="meta" if empty else device)
        else:
            packed = torch.empty((out_features, width // 2), dtype=torch.uint8, device="meta" if empty else device)
        self.register_buffer("packed", packed)
        self.register_buffer(
            "scales_and_zeros",
            torch.empty((width // GROUP, out_features, 2), dtype=kernel_dtype, device="meta" if empty else device),
        )
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_groups(
        cls,
        chunks: Iterable[Int4Groups],
        device: torch.device,
        kernel_dtype: torch.dtype = torch.bfloat16,
        bias: torch.Tensor | None = None,
    ) -> Int4Linear:
        """Pack row chunks (each a multiple of 64 rows, except the last) of one weight for `device`'s kernel."""
        chunks = list(chunks)
        planes = chunks[0].planes
        codes = np.concatenate([c.codes for c in chunks]) if len(chunks) > 1 else chunks[0].codes
        scales = np.concatenate([c.scales for c in chunks]) if len(chunks) > 1 else chunks[0].scales
        zeros = np.concatenate([c.zeros for c in chunks]) if len(chunks) > 1 else chunks[0].zeros
        out_features, width = codes.shape
        layer = cls(width // planes, out_features, planes, device, kernel_dtype, bias, empty=True)
        if device.type == "cuda":
            pairs = nibble_pairs(torch.from_numpy(codes)).to(device)
            layer.packed = torch._convert_weight_to_int4pack(pairs, cuda_inner_k_tiles(width))
        else:
            layer.packed = _pack_cpu(codes)
        sz = np.stack([scales.T, zeros.T], axis=-1)  # [groups, N, 2]
        layer.scales_and_zeros = torch.from_numpy(np.ascontiguousarray(sz)).to(device=device, dtype=kernel_dtype)
        if bias is not None:
            layer.bias = nn.Parameter(bias.to(device), requires_grad=False)
        return layer

    def mm(self, x: torch.Tensor) -> torch.Tensor:
        """x [rows, in_features] in kernel_dtype -> [rows, out_features] in kernel_dtype, without bias (the hot path)."""
        if x.shape[0] >= DEQUANTIZE_ROWS and not self.packed.is_cuda:
            return nn.functional.linear(x.float(), self.dequantize()).to(x.dtype)
        if self.planes > 1:
            x = x.repeat(1, self.planes)
        elif not x.is_contiguous():
            x = x.contiguous()
        if self.packed.is_cuda:
            return torch._weight_int4pack_mm(x, self.packed, GROUP, self.scales_and_zeros)
        return torch._weight_int4pack_mm_for_cpu(x, self.packed, GROUP, self.scales_and_zeros)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = self.mm(flat if flat.dtype == self.kernel_dtype else flat.to(self.kernel_dtype))
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def dequantize(self) -> torch.Tensor:
        """The whole weight [out_features, in_features] in fp32, unpacked from the CPU layout (CpuPackLayout)."""
        layout = cpu_pack_layout()
        width, bn = self.planes * self.in_features, layout.block_n
        full = self.out_features // bn * bn if layout.interleaved else 0
        parts = []
        if full:
            blocks = self.packed[:full].reshape(full // bn, width, bn // 2)
            codes = torch.cat([blocks & 0x0F, blocks >> 4], dim=-1).permute(0, 2, 1).reshape(full, width)
            sz = self.scales_and_zeros[:, :full].float()
            w = (codes.view(full, -1, GROUP).float() - 8) * sz[..., 0].T[..., None] + sz[..., 1].T[..., None]
            parts.append(w.view(full, self.planes, self.in_features).sum(1))
        if full < self.out_features:
            parts.append(self.rows(torch.arange(full, self.out_features, device=self.packed.device), torch.float32))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def rows(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows `ids` of the weight, dequantized: [*ids.shape, in_features]. CPU layout only (see CpuPackLayout)."""
        flat_ids = ids.reshape(-1)
        layout = cpu_pack_layout()
        width = self.planes * self.in_features
        bn = layout.block_n
        block, r = flat_ids // bn, flat_ids % bn
        rows_in_block = torch.clamp(self.out_features - block * bn, max=bn)
        full = (rows_in_block == bn) & layout.interleaved
        half = bn // 2
        stride = torch.where(full, half, rows_in_block // 2)
        column = torch.where(full, r % half, r // 2)
        nibble = torch.where(full, r // half, r % 2)
        k = torch.arange(width, device=ids.device)
        index = (block * (bn * width // 2) + column)[:, None] + k[None, :] * stride[:, None]
        codes = (self.packed.view(-1)[index] >> (4 * nibble[:, None]).to(torch.uint8)) & 0x0F
        sz = self.scales_and_zeros[:, flat_ids].float()  # [groups, T, 2]
        groups = codes.view(len(flat_ids), -1, GROUP).float() - 8
        w = groups * sz[..., 0].T[..., None] + sz[..., 1].T[..., None]
        w = w.view(len(flat_ids), self.planes, self.in_features).sum(1)
        return w.to(dtype).reshape(*ids.shape, self.in_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, int4 groups of {GROUP}"
            + (f", {self.planes} planes" if self.planes > 1 else "")
            + f", {str(self.kernel_dtype).removeprefix('torch.')} kernel"
        )


# A GGUF's quantized Linear, either kind: ClawBot's block kernel (block_linear.py) or torch's int4 kernels (above).
QuantizedLinear = Int4Linear | BlockLinear
QUANTIZED = (Int4Linear, BlockLinear)


class Int4Embedding(nn.Module):
    """A tied embedding table read from the output head's int4 or block weight; holds no tensor of its own."""

    def __init__(self, head: QuantizedLinear, dtype: torch.dtype, scale: float | None = None) -> None:
        super().__init__()
        object.__setattr__(self, "head", head)  # not a submodule: its buffers are the head's, saved once
        self.embedding_dim = head.in_features
        self.num_embeddings = head.out_features
        self.dtype = dtype
        self.scale = scale  # Gemma multiplies embeddings by sqrt(hidden_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.head.rows(ids, self.dtype)
        return out if self.scale is None else out * self.scale

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rows of the tied int4 output head"


class FusedLinears(nn.Module):
    """Several Linears over the same input (q/k/v, gate/up) as one quantized linear: one kernel call, not several.

    The parts stay in the model as `FusedPart`s, so a forward that calls q_proj(x), k_proj(x), v_proj(x) in turn gets
    the three slices of one matmul: the first part called with a tensor computes, the others reuse its output.
    """

    def __init__(self, fused: QuantizedLinear, sizes: list[int]) -> None:
        super().__init__()
        self.fused = fused
        self.sizes = sizes
        self._input: torch.Tensor | None = None
        self._output: list[torch.Tensor] = []
        self._taken = 0

    def part(self, x: torch.Tensor, index: int) -> torch.Tensor:
        if self._input is not x or self._taken >= len(self.sizes):
            self._input, self._output, self._taken = x, list(self.fused(x).split(self.sizes, dim=-1)), 0
        self._taken += 1
        out = self._output[index]
        if self._taken == len(self.sizes):  # every part delivered: drop the references
            self._input, self._output = None, []
        return out


class FusedPart(nn.Module):
    def __init__(self, owner: FusedLinears, index: int) -> None:
        super().__init__()
        object.__setattr__(self, "owner", owner)  # the owner is registered once, on the parent module
        self.index = index
        self.out_features = owner.sizes[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.owner.part(x, self.index)

    def extra_repr(self) -> str:
        return f"part {self.index} ({self.out_features} outputs) of a fused int4 linear"


class DenseLinear(nn.Module):
    """A weight with no quantized form here (Q6_K off the block kernel, Q2_K/Q3_K, F16): the gguf package's
    dequantized values, held in the kernel dtype like the int4 layers' scales, so it costs 2 bytes a weight rather
    than fp32's 4."""

    def __init__(self, weight: torch.Tensor, kernel_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight.to(kernel_dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.linear(x if x.dtype == self.weight.dtype else x.to(self.weight.dtype), self.weight)
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dense {str(self.weight.dtype).removeprefix('torch.')}"


def fuse(parts: list[Int4Linear]) -> Int4Linear:
    """One Int4Linear whose outputs are the parts' outputs side by side (same input width and planes; CPU layout,
    whose packed rows come in blocks of at most 64, so every part but the last must have a multiple of 64 rows)."""
    first = parts[0]
    if any(p.in_features != first.in_features or p.planes != first.planes or p.bias is not None for p in parts):
        raise ValueError("only int4 linears with the same input width and planes, without bias, can be fused")
    if any(p.out_features % 64 for p in parts[:-1]):
        raise ValueError("every fused part but the last needs a multiple of 64 rows")
    out = Int4Linear(
        first.in_features,
        sum(p.out_features for p in parts),
        first.planes,
        first.packed.device,
        first.kernel_dtype,
        empty=True,
    )
    out.packed = torch.cat([p.packed for p in parts])
    out.scales_and_zeros = torch.cat([p.scales_and_zeros for p in parts], dim=1).contiguous()
    return out
