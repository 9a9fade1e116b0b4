"""The C++ steps around a decode step's matmuls (app/inference/kernels/decode_ops.cpp, via decode_steps.BlockSteps)
compute what the torch ops they replace compute, to fp32 rounding; TorchSteps is the reference they are held to."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as Q
from gguf import quants

from app.inference.block_linear import BlockLinear
from app.inference.decode_steps import BlockSteps, TorchSteps, steps_for
from app.inference.gguf_blocks import code_blocks
from app.inference.kernels import build
from tests.app.inference.gguf_tensors import ROWS, K, kernel_bound

pytestmark = pytest.mark.skipif(build.supported_cpu() is not None, reason=f"{build.supported_cpu()}")


@pytest.fixture(scope="module")
def layer(tensors: dict[Q, np.ndarray]) -> tuple[BlockLinear, torch.Tensor]:
    raw = tensors[Q.Q4_1]
    return BlockLinear.from_code_blocks([code_blocks(Q.Q4_1, raw)]), torch.from_numpy(quants.dequantize(raw, Q.Q4_1))


def assert_within(out: torch.Tensor, expected: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> None:
    """out is x @ weight.T (plus what expected adds) to the kernel's rounding, and one more fp32 rounding."""
    assert ((out - expected).abs() <= kernel_bound(x, weight) + 1e-6 * expected.abs()).all()


@pytest.mark.parametrize("rows", [1, 3, 32])
def test_norm_then_matmul(layer: tuple[BlockLinear, torch.Tensor], rows: int) -> None:
    linear, weight = layer
    x, norm = torch.randn(rows, K) * 3, torch.rand(K) + 0.5
    out = BlockSteps().normed(linear, x, norm, 1e-5)
    normed = F.rms_norm(x, (K,), norm, 1e-5)
    assert_within(out, normed @ weight.T, normed, weight)
    # Both round their inputs to int16, but their norms may differ in the last bit, which can move an input a step.
    assert_within(out, TorchSteps(torch.float32, torch.float32).normed(linear, x, norm, 1e-5), normed, 2 * weight)


@pytest.mark.parametrize("rows", [1, 5])
def test_matmul_plus_residual_and_the_gated_matmul(layer: tuple[BlockLinear, torch.Tensor], rows: int) -> None:
    linear, weight = layer
    steps = BlockSteps()
    x, residual = torch.randn(rows, K), torch.randn(rows, ROWS)
    assert_within(steps.residual(linear, x, residual), residual + x @ weight.T, x, weight)
    gate_up = torch.randn(rows, 2 * K) * 4
    act = F.silu(gate_up[:, :K]) * gate_up[:, K:]
    assert_within(steps.gated(linear, gate_up, residual), residual + act @ weight.T, act, weight)
    reference = TorchSteps(torch.float32, torch.float32).gated(linear, gate_up, residual)
    assert_within(steps.gated(linear, gate_up, residual), reference, act, 2 * weight)


def test_rotary_in_place_rotates_only_the_first_heads() -> None:
    tokens, heads, rotated, d = 7, 5, 3, 8
    qkv = torch.randn(tokens, heads * d)
    angles = torch.rand(tokens, d // 2) * 6
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    expected = qkv.clone()
    TorchSteps(torch.float32, torch.float32).rope(expected, cos, sin, rotated, d)
    got = qkv.clone()
    BlockSteps().rope(got, cos, sin, rotated, d)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert torch.equal(got[:, rotated * d :], qkv[:, rotated * d :])  # v untouched
    # what transformers does: x cos + rotate_half(x) sin, head by head
    x = qkv[:, :d]
    half = torch.cat((-x[:, d // 2 :], x[:, : d // 2]), -1)
    torch.testing.assert_close(got[:, :d], x * cos + half * sin, atol=1e-6, rtol=1e-6)


def test_bad_shapes_are_refused(layer: tuple[BlockLinear, torch.Tensor]) -> None:
    linear, _ = layer
    steps = BlockSteps()
    with pytest.raises(RuntimeError, match="norm weight"):
        steps.normed(linear, torch.randn(2, K), torch.rand(K - 1), 1e-5)
    with pytest.raises(RuntimeError, match="residual"):
        steps.residual(linear, torch.randn(2, K), torch.randn(3, ROWS))
    with pytest.raises(RuntimeError, match="even width"):
        steps.gated(linear, torch.randn(2, 2 * K + 1), torch.randn(2, ROWS))
    with pytest.raises(RuntimeError, match="do not fit"):
        steps.rope(torch.randn(2, 16), torch.randn(2, 8), torch.randn(2, 8), 3, 8)


def test_the_head_chooses_the_steps(layer: tuple[BlockLinear, torch.Tensor]) -> None:
    assert isinstance(steps_for(layer[0], torch.float32), BlockSteps)


def test_a_whole_decode_step_refuses_what_does_not_fit(layer: tuple[BlockLinear, torch.Tensor]) -> None:
    """decode_layers (kernels/decode_layers.cpp) checks its lists and each cache buffer before it writes into one."""
    linear, _ = layer
    ops = BlockSteps().ops
    h, rope = torch.randn(1, K), torch.randn(1, 8)
    norm = torch.ones(K)
    weights = [norm, linear.blocks, linear.blocks, norm, linear.blocks, linear.blocks]
    full = torch.zeros(1, 1, 4, 8)

    def call(weights: list[torch.Tensor], keys: torch.Tensor, held: int, mask: torch.Tensor | None = None) -> None:
        ops.decode_layers(
            h, weights, [linear.format] * 4, [ROWS] * 4, 1e-5, rope, rope, 1, 1, 8, [keys], [keys], held, mask, 1.0
        )

    with pytest.raises(RuntimeError, match="6 weights"):
        call(weights[:5], full, 2)
    with pytest.raises(RuntimeError, match="columns > 4"):
        call(weights, full, 4)  # no room for the new column
    with pytest.raises(RuntimeError, match="mask must be"):
        call(weights, full, 2, torch.zeros(1, 2))
