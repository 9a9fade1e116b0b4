"""Linear layers with their weights reordered once for oneDNN's CPU matmul (bf16 and fp16 compute).

For a bf16 weight, `torch.nn.functional.linear` on a CPU hands the matmul to oneDNN, which reorders the weight
into its blocked layout on every call. For one input row (a decode step of one stream) that reorder is most of
the work: a 1536x576 layer took 64 us through `linear` and 28 us with the weight reordered once (155 and 78 us
for 32 rows), on the same kernel and with the same results. `pack_linears` does that reorder at load time
(`torch.ops.mkldnn._reorder_linear_weight`, what torch.compile's CPU freezing does) and calls the prepacked
matmul directly. fp32 weights go to MKL's sgemm, which needs no reorder, so only reduced-precision weights are
packed.
"""

from __future__ import annotations

import torch
from torch import nn

from app.inference.linear_swap import replace_linears

PACKED_DTYPES = (torch.bfloat16, torch.float16)


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this torch build and this CPU can prepack Linear weights of this dtype.

    oneDNN's reorder refuses bf16 without AVX512-BF16/AVX-NE-CONVERT and fp16 without AVX512-FP16 (an AVX2-only
    CPU, for one): there the weights stay as they are and F.linear computes them the slow, emulated way."""
    if device.type != "cpu" or dtype not in PACKED_DTYPES or not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())


class PackedLinear(nn.Module):
    """The same inputs and outputs as the nn.Linear it replaces; the weight is held in oneDNN's layout."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # The batch-size hint 1 lays the weight out for decode steps; larger inputs run on the same layout.
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(weight, 1))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = torch.ops.mkldnn._linear_pointwise(flat, self.packed_weight, self.bias, "none", [], "")
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN-prepacked"


def pack_linears(module: nn.Module) -> int:
    """Replace every nn.Linear under `module` (the output head included) with a PackedLinear; returns how many."""
    return replace_linears(module, PackedLinear)
