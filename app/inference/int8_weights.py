"""Weight-only int8 for CPU: each Linear's weight stored as int8 with one scale per output row.

One decode step of one stream reads every weight once, so on a CPU its speed is the bytes of
weights over memory bandwidth; int8 halves bf16's bytes. The matmul is torch's
`_weight_int8pack_mm` (the CPU kernel gpt-fast uses for int8 weight-only), which reads the int8
weights directly instead of dequantizing a copy first. Activations stay in the compute dtype.
bitsandbytes' int8 (LLM.int8) on CPU was slower than fp32 here (19 vs 25 tok/s, bench/quality.py),
so QUANTIZATION=int8 uses this on CPU and bitsandbytes on CUDA.

Symmetric per-row scales: w ~ q * scale, q in [-127, 127], scale = max|w_row| / 127.

`_weight_int8pack_mm` is a matrix-vector kernel: its time grows with every input row (1536x576 weights, bf16, 2
cores: 16 us for 1 row, 190 us for 32, 3.1 ms for 512). From DEQUANTIZE_ROWS rows on (a prefill chunk, a wide
decode batch) widening the weight to the compute dtype once and running the dense matmul is faster (153 us for
32 rows, 1.0 ms for 512, copy included), so both paths are used; they agree within bf16 rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from app.inference.linear_swap import replace_linears

# The row count from which dequantize-then-matmul beats the int8 mat-vec kernel (measured crossover: 16-32 rows).
DEQUANTIZE_ROWS = 24


class Int8Linear(nn.Module):
    """A Linear whose weight is int8 with a per-output-row scale; same inputs and outputs as the original."""

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(compute_dtype))
        self.bias = (
            None if linear.bias is None else nn.Parameter(linear.bias.detach().to(compute_dtype), requires_grad=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.dtype != self.scale.dtype:
            flat = flat.to(self.scale.dtype)
        if flat.shape[0] >= DEQUANTIZE_ROWS:
            out = nn.functional.linear(flat, self.qweight.to(flat.dtype)) * self.scale
        else:
            out = torch._weight_int8pack_mm(flat.contiguous(), self.qweight, self.scale)
        out = out.reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight-only"


def quantize_linears(module: nn.Module, compute_dtype: torch.dtype) -> int:
    """Replace every nn.Linear under `module` (the output head included) with an Int8Linear; returns how many."""
    return replace_linears(module, lambda linear: Int8Linear(linear, compute_dtype))
