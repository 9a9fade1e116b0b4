"""GGUF blocks served through torch's int4 kernels: for each block type, the int4 matmul equals a matmul with the
`gguf` package's own dequantized weight, within the rounding of the compute dtype.

The tensors are the `tensors` fixture's (tests/app/inference/gguf_tensors.py): small synthetic ones written to a
real GGUF file and read back through the memory-mapped reader, as the loader reads a model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import quants

from app.inference.gguf_blocks import PLANES, int4_groups
from app.inference.int4_linear import (
    CpuPackLayout,
    DenseLinear,
    FusedLinears,
    FusedPart,
    Int4Embedding,
    Int4Linear,
    cpu_pack_layout,
    cuda_inner_k_tiles,
    fuse,
    nibble_pairs,
)
from tests.app.inference.gguf_tensors import ROWS, K, rounding_bound

CPU = torch.device("cpu")


@pytest.mark.parametrize("qtype", list(PLANES), ids=lambda q: q.name)
def test_int4_matmul_equals_the_gguf_dequantized_matmul(qtype: Q, tensors: dict[Q, np.ndarray]) -> None:
    raw = tensors[qtype]
    reference = torch.from_numpy(quants.dequantize(raw, qtype)).float()
    assert reference.shape == (ROWS, K)
    x = torch.randn(5, K)
    expected = x @ reference.T
    # fp32 end to end: the codes are carried exactly, so only fp32 summation order differs.
    exact = Int4Linear.from_groups([int4_groups(qtype, raw)], CPU, torch.float32)
    assert exact.planes == PLANES[qtype]
    assert ((exact(x) - expected).abs() <= 1e-5 * rounding_bound(x, reference) + 1e-7).all()
    # bf16, what the service runs: activations, scales and zeros rounded to bf16 (8 significant bits).
    served = Int4Linear.from_groups([int4_groups(qtype, raw)], CPU, torch.bfloat16)
    out = served(x)
    assert out.dtype == torch.float32
    assert ((out - expected).abs() <= 2**-7 * rounding_bound(x, reference) + 1e-6).all()


@pytest.mark.parametrize("qtype", [Q.Q4_1, Q.Q8_0, Q.Q4_K], ids=lambda q: q.name)
def test_embedding_rows_are_the_dequantized_rows(qtype: Q, tensors: dict[Q, np.ndarray]) -> None:
    raw = tensors[qtype]
    reference = torch.from_numpy(quants.dequantize(raw, qtype)).float()
    head = Int4Linear.from_groups([int4_groups(qtype, raw)], CPU, torch.float32)
    ids = torch.tensor([[0, 1, 15, 16, 31, 32], [63, 64, 95, 96, 100, ROWS - 1]])
    rows = Int4Embedding(head, torch.float32)(ids)
    assert rows.shape == (2, 6, K)
    torch.testing.assert_close(rows, reference[ids], atol=1e-6, rtol=1e-6)
    scaled = Int4Embedding(head, torch.float32, scale=2.0)(ids)
    torch.testing.assert_close(scaled, 2 * reference[ids], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("qtype", [Q.Q4_1, Q.Q8_0], ids=lambda q: q.name)
def test_wide_inputs_take_the_dequantized_path_with_the_same_result(qtype: Q, tensors: dict[Q, np.ndarray]) -> None:
    from app.inference.int4_linear import DEQUANTIZE_ROWS

    raw = tensors[qtype]
    reference = torch.from_numpy(quants.dequantize(raw, qtype)).float()
    layer = Int4Linear.from_groups([int4_groups(qtype, raw)], CPU, torch.float32)
    torch.testing.assert_close(layer.dequantize(), reference, atol=1e-6, rtol=1e-5)
    x = torch.randn(DEQUANTIZE_ROWS, K)
    kernel = torch._weight_int4pack_mm_for_cpu(x.repeat(1, layer.planes), layer.packed, 32, layer.scales_and_zeros)
    torch.testing.assert_close(layer(x), kernel, atol=1e-4, rtol=1e-4)


def test_the_cpu_layout_matches_what_torch_packs_on_this_machine() -> None:
    layout = cpu_pack_layout()
    assert layout in (CpuPackLayout(64, True), CpuPackLayout(32, True), CpuPackLayout(32, False))
    codes = torch.randint(0, 16, (80, 64), dtype=torch.int32)  # a full block and a partial one on every layout
    packed = torch._convert_weight_to_int4pack_for_cpu(codes, 1)
    layer = Int4Linear(64, 80, 1, CPU, torch.float32)
    layer.packed = packed
    sz = torch.zeros(2, 80, 2)
    sz[..., 0] = 1.0
    sz[..., 1] = 8.0  # w = (q - 8) * 1 + 8 = q
    layer.scales_and_zeros = sz
    assert torch.equal(layer.rows(torch.arange(80), torch.float32), codes.float())


def test_fused_parts_give_the_outputs_of_separate_layers(tensors: dict[Q, np.ndarray]) -> None:
    q = Int4Linear.from_groups([int4_groups(Q.Q4_1, tensors[Q.Q4_1][:64])], CPU)
    k = Int4Linear.from_groups([int4_groups(Q.Q4_1, tensors[Q.Q4_1][64:])], CPU)
    owner = FusedLinears(fuse([q, k]), [64, ROWS - 64])
    parts = [FusedPart(owner, 0), FusedPart(owner, 1)]
    x = torch.randn(3, K)
    assert torch.equal(parts[0](x), q(x)) and torch.equal(parts[1](x), k(x))
    with pytest.raises(ValueError, match="same input width and planes"):
        fuse([q, Int4Linear.from_groups([int4_groups(Q.Q8_0, tensors[Q.Q8_0])], CPU)])


def test_a_type_without_int4_form_stays_dense_in_the_kernel_dtype(tensors: dict[Q, np.ndarray]) -> None:
    weight = torch.from_numpy(quants.dequantize(tensors[Q.Q4_1], Q.Q4_1)).float()
    layer = DenseLinear(weight)
    assert layer.weight.dtype == torch.bfloat16
    x = torch.randn(2, K)
    assert ((layer(x) - x @ weight.T).abs() <= 2**-7 * rounding_bound(x, weight) + 1e-6).all()
    with pytest.raises(ValueError, match="no int4 form"):
        int4_groups(Q.Q6_K, np.zeros((1, 210), dtype=np.uint8))


def test_cuda_packing_inputs_are_prepared_on_the_cpu() -> None:
    """What the CUDA path hands torch._convert_weight_to_int4pack, checked without a GPU."""
    codes = torch.tensor([[1, 2, 15, 0]])
    assert nibble_pairs(codes).tolist() == [[0x12, 0xF0]]
    assert cuda_inner_k_tiles(576) == 4 and cuda_inner_k_tiles(1152) == 8 and cuda_inner_k_tiles(640) == 8
    assert cuda_inner_k_tiles(32) == 2
    with pytest.raises(ValueError):
        cuda_inner_k_tiles(48)
