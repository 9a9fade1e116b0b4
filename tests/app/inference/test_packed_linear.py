"""PackedLinear: an nn.Linear with its weight in oneDNN's layout, the same outputs for any input shape."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from app.inference.packed_linear import PackedLinear, can_pack, pack_linears

pytestmark = pytest.mark.skipif(
    not can_pack(torch.device("cpu"), torch.bfloat16),
    reason="this CPU has no native bf16 for oneDNN to prepack (AVX512-BF16 or AVX-NE-CONVERT)",
)


@pytest.mark.parametrize("rows", [1, 3, 40])
def test_outputs_match_the_linear_it_replaces(rows: int) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=True).to(torch.bfloat16)
    x = torch.randn(2, rows, 64, dtype=torch.bfloat16)
    got = PackedLinear(linear)(x)
    assert got.shape == (2, rows, 48) and got.dtype == torch.bfloat16
    torch.testing.assert_close(got, linear(x))


def test_every_linear_is_replaced_and_the_weight_is_a_buffer() -> None:
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Sequential(nn.Linear(32, 8, bias=False))).to(torch.bfloat16)
    x = torch.randn(5, 16, dtype=torch.bfloat16)
    want = model(x)
    assert pack_linears(model) == 2
    assert not [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert model[2][0].bias is None and model[0].packed_weight.numel() == 32 * 16
    torch.testing.assert_close(model(x), want)
