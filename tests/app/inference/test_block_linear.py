"""GGUF blocks served through ClawBot's AVX2 kernel: for each block type, the kernel's matmul equals a matmul with the
`gguf` package's own dequantized weight to fp32 rounding, at every input-row count the kernel tiles differently.

The kernel runs wherever the CPU has AVX2, FMA and F16C (every x86-64 server of the last decade, and this one);
the tests skip only on a CPU without them, where the loader falls back to torch's int4 kernel (test_gguf_blocks.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import quants

from app.inference import kernels
from app.inference.block_linear import (
    BLOCK_BYTES,
    Q4_FLOAT,
    Q4_HALF,
    Q8_FLOAT,
    Q8_HALF,
    Q8_PAIR,
    BlockLinear,
    fuse_blocks,
)
from app.inference.gguf_blocks import BLOCK_TYPES, code_blocks
from app.inference.int4_linear import FusedLinears, FusedPart, Int4Embedding
from app.inference.kernels import build
from tests.app.inference.gguf_tensors import ROWS, K, kernel_bound

pytestmark = pytest.mark.skipif(build.supported_cpu() is not None, reason=f"{build.supported_cpu()}")

# Input rows: one stream (two weight rows at a time), the small tiles 2..7, the panel path from 8 on with its
# 16-row tiles, a tile of 8 (8, 100 = 6 x 16 + 4) and a padded tile of 16 (13), and a prefill chunk.
ROW_COUNTS = (1, 2, 3, 5, 7, 8, 13, 32, 100)
EXPECTED_FORMAT = {
    Q.Q4_0: Q4_HALF,  # d and -8d: fp16 numbers
    Q.Q4_1: Q4_HALF,
    Q.Q4_K: Q4_FLOAT,  # d * sc has up to 17 significant bits
    Q.Q8_0: Q8_HALF,
    Q.Q5_0: Q8_HALF,
    Q.Q5_1: Q8_HALF,
    Q.Q5_K: Q8_FLOAT,
    Q.Q6_K: Q8_PAIR,  # d * sc per 16 weights
}


def _reference(qtype: Q, raw: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(quants.dequantize(raw, qtype)).float()


def _layer(qtype: Q, raw: np.ndarray) -> BlockLinear:
    return BlockLinear.from_code_blocks([code_blocks(qtype, raw)])


def test_the_kernels_load_on_this_machine() -> None:
    assert kernels.load() is None


@pytest.mark.parametrize("qtype", list(BLOCK_TYPES), ids=lambda q: q.name)
def test_code_blocks_are_the_gguf_dequantization_exactly(qtype: Q, tensors: dict[Q, np.ndarray]) -> None:
    raw = tensors[qtype]
    blocks = code_blocks(qtype, raw)
    halves = blocks.codes.astype(np.float32).reshape(ROWS, K // 32, -1, 32 // blocks.d[0, 0].size)
    d = blocks.d.reshape(ROWS, K // 32, -1)  # one scale a block, or a pair's two: each for its half
    weight = (d[..., None] * halves + blocks.m[..., None, None]).reshape(ROWS, K)
    assert np.array_equal(weight, quants.dequantize(raw, qtype))
    layer = _layer(qtype, raw)
    assert layer.format == EXPECTED_FORMAT[qtype]
    assert torch.equal(layer.dequantize(), _reference(qtype, raw))  # the kernel's own dequantization, bit for bit


@pytest.mark.parametrize("qtype", list(BLOCK_TYPES), ids=lambda q: q.name)
def test_block_matmul_equals_the_gguf_dequantized_matmul(qtype: Q, tensors: dict[Q, np.ndarray]) -> None:
    raw = tensors[qtype]
    reference = _reference(qtype, raw)
    layer = _layer(qtype, raw)
    for rows in ROW_COUNTS:
        x = torch.randn(rows, K)
        out = layer(x)
        assert out.shape == (rows, ROWS) and out.dtype == torch.float32
        # fp32 end to end, with few rows' inputs rounded to int16 (kernel_bound).
        error = (out - x @ reference.T).abs()
        assert (error <= kernel_bound(x, reference)).all(), (rows, error.max())


def test_a_q4_1_layer_holds_the_files_own_bytes(tensors: dict[Q, np.ndarray]) -> None:
    raw = tensors[Q.Q4_1]
    layer = _layer(Q.Q4_1, raw)
    assert BLOCK_BYTES[Q4_HALF] == quants.GGML_QUANT_SIZES[Q.Q4_1][1] == 20
    assert layer.blocks.numel() == raw.nbytes


def test_rows_that_fill_no_whole_tile_or_panel(tensors: dict[Q, np.ndarray]) -> None:
    raw = tensors[Q.Q4_1][:37]  # 37 output rows: odd, three 12-row panels and one row (half a tile)
    reference = _reference(Q.Q4_1, raw)
    layer = _layer(Q.Q4_1, raw)
    for rows in (1, 9, 32):
        x = torch.randn(rows, K)
        assert ((layer(x) - x @ reference.T).abs() <= kernel_bound(x, reference)).all()


def test_bias_and_leading_dimensions(tensors: dict[Q, np.ndarray]) -> None:
    raw = tensors[Q.Q8_0]
    bias = torch.randn(ROWS)
    layer = BlockLinear.from_code_blocks([code_blocks(Q.Q8_0, raw)], bias=bias)
    x = torch.randn(2, 3, K, dtype=torch.bfloat16)
    out = layer(x)
    assert out.shape == (2, 3, ROWS) and out.dtype == torch.bfloat16
    expected = x.float() @ _reference(Q.Q8_0, raw).T + bias
    torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("qtype", [Q.Q4_1, Q.Q8_0, Q.Q4_K, Q.Q6_K], ids=lambda q: q.name)
def test_embedding_rows_are_the_dequantized_rows(qtype: Q, tensors: dict[Q, np.ndarray]) -> None:
    raw = tensors[qtype]
    reference = _reference(qtype, raw)
    ids = torch.tensor([[0, 1, 15, 16, 31, 32], [63, 64, 95, 96, 100, ROWS - 1]])
    rows = Int4Embedding(_layer(qtype, raw), torch.float32)(ids)
    assert torch.equal(rows, reference[ids])
    assert torch.equal(Int4Embedding(_layer(qtype, raw), torch.float32, scale=2.0)(ids), 2 * reference[ids])


def test_fused_parts_give_the_outputs_of_separate_layers(tensors: dict[Q, np.ndarray]) -> None:
    q = _layer(Q.Q4_1, tensors[Q.Q4_1][:64])
    k = _layer(Q.Q4_K, tensors[Q.Q4_K][64:])  # fp16 and fp32 constants: the fused weight holds fp32
    fused = fuse_blocks([q, k])
    assert fused.format == Q4_FLOAT
    owner = FusedLinears(fused, [64, ROWS - 64])
    parts = [FusedPart(owner, 0), FusedPart(owner, 1)]
    for rows in (1, 12):
        x = torch.randn(rows, K)
        torch.testing.assert_close(parts[0](x), q(x), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(parts[1](x), k(x), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="4-bit and 8-bit"):
        fuse_blocks([q, _layer(Q.Q8_0, tensors[Q.Q8_0])])
    assert fuse_blocks([_layer(Q.Q8_0, tensors[Q.Q8_0]), _layer(Q.Q5_K, tensors[Q.Q5_K])]).format == Q8_FLOAT
    # A scale per 16 weights joins only its own kind (llama.cpp's Q4_K_M mixes Q6_K into some layers' v).
    six = _layer(Q.Q6_K, tensors[Q.Q6_K])
    with pytest.raises(ValueError, match="one and two scales"):
        fuse_blocks([_layer(Q.Q8_0, tensors[Q.Q8_0]), six])
    both = fuse_blocks([six, six])
    assert both.format == Q8_PAIR and torch.equal(both.dequantize(), torch.cat([six.dequantize()] * 2))


def test_the_kernel_refuses_what_does_not_fit(tensors: dict[Q, np.ndarray]) -> None:
    layer = _layer(Q.Q4_1, tensors[Q.Q4_1])
    with pytest.raises(RuntimeError, match="float32"):
        kernels.ops().mm(torch.randn(2, K, dtype=torch.float64), layer.blocks, layer.format, ROWS)
    with pytest.raises(RuntimeError, match="bytes"):
        kernels.ops().mm(torch.randn(2, K), layer.blocks, layer.format, ROWS + 1)
    with pytest.raises(RuntimeError, match="format"):
        kernels.ops().mm(torch.randn(2, K), layer.blocks, 9, ROWS)
    with pytest.raises(ValueError, match="whole groups"):
        BlockLinear(100, 16, Q4_HALF)


def test_a_missing_compiler_is_a_clear_error_and_leaves_no_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(os.environ, "CXX", str(tmp_path / "no-such-g++"))
    with pytest.raises(build.KernelBuildError, match="compiler did not run"):
        build.build(tmp_path)
    assert not list(tmp_path.glob("*.so"))


def test_the_library_name_changes_with_the_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    before = build.library_name()
    changed = tmp_path / "gguf_cpu.cpp"
    changed.write_text(build.SOURCES[0].read_text() + "\n// changed\n")
    monkeypatch.setattr(build, "SOURCES", (changed, *build.SOURCES[1:]))
    assert build.library_name() != before
