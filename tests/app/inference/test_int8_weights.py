"""Weight-only int8 Linear: per-row scales, the same outputs as the full-precision layer within int8's rounding."""

from __future__ import annotations

import torch
from torch import nn

from app.inference.int8_weights import Int8Linear, quantize_linears


def test_outputs_match_the_float_layer_within_int8_rounding() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=True)
    with torch.no_grad():
        linear.weight[3] *= 100  # one row with a much larger range: per-row scales keep the others precise
    x = torch.randn(2, 5, 64)
    want = linear(x)
    got = Int8Linear(linear, torch.float32)(x)
    assert got.shape == want.shape and got.dtype == torch.float32
    error = (got - want).abs().amax(dim=(0, 1))  # per output feature
    assert error[3] < 1.0 and torch.cat([error[:3], error[4:]]).max() < 0.02, error


def test_bf16_activations_and_every_linear_replaced() -> None:
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Sequential(nn.Linear(32, 8, bias=False))).to(torch.bfloat16)
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    want = model(x)
    assert quantize_linears(model, torch.bfloat16) == 2
    assert all(not isinstance(m, nn.Linear) for m in model.modules())
    got = model(x)
    assert got.dtype == torch.bfloat16 and torch.allclose(got.float(), want.float(), atol=0.1, rtol=0.05)
    assert model[0].qweight.dtype == torch.int8 and model[0].qweight.abs().max() <= 127


def test_many_rows_take_the_dequantized_path_with_the_same_outputs() -> None:
    """From DEQUANTIZE_ROWS rows on the layer widens its weight and runs a dense matmul; each row's answer stays."""
    from app.inference import int8_weights

    torch.manual_seed(1)
    layer = Int8Linear(nn.Linear(64, 40, bias=True), torch.float32)
    x = torch.randn(int8_weights.DEQUANTIZE_ROWS + 5, 64)
    together = layer(x)
    alone = torch.cat([layer(x[i : i + 1]) for i in range(x.shape[0])])  # one row at a time: the int8 kernel
    widened = nn.functional.linear(x, layer.qweight.float() * layer.scale[:, None], layer.bias)
    assert torch.allclose(together, alone, atol=1e-4) and torch.allclose(together, widened, atol=1e-4)
