"""Small synthetic GGUF tensors of every block type with a 32-weight form, in a real GGUF file; where the GGUF model
tests keep their packed models; and the rounding bound the quantized-linear tests hold matmuls to.

Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 are quantized by the `gguf` package itself; it has no quantizer for the K-quants,
so Q4_K, Q5_K and Q6_K blocks are random bytes with sane fp16 super-block scales (every byte pattern is a valid
block).
The file is written with gguf.GGUFWriter and read back through the memory-mapped reader, as the loader reads a
model (the `tensors` fixture in conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFWriter, quants

from app.inference.gguf_blocks import BLOCK_TYPES

# The packed embedded model, cached across runs (gguf_model's cache): the conftest's `smollm2` fixture loads it.
GGUF_DATA_DIR = Path(__file__).resolve().parents[3] / "build" / "test-data" / "gguf"
ROWS, K = 112, 512  # 112 rows: full packing blocks and a partial last one, on every CPU layout
QUANTIZED_BY_GGUF = (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0)
FP16_FIELDS = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}  # byte offsets of d (and dmin) in a super-block


def _k_quant_blocks(qtype: Q, rng: np.random.Generator) -> np.ndarray:
    block, size = quants.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(ROWS, K // block, size), dtype=np.uint8)
    for offset in FP16_FIELDS[qtype]:
        raw[..., offset : offset + 2] = (
            (rng.standard_normal((ROWS, K // block, 1)) * 0.01).astype(np.float16).view(np.uint8)
        )
    return raw.reshape(ROWS, -1)


def write_gguf(path: Path) -> Path:
    """One tensor `w.<TYPE>` [ROWS, K] per type in BLOCK_TYPES (the int4 types and Q6_K), written to `path`."""
    rng = np.random.default_rng(7)
    writer = GGUFWriter(str(path), "llama")
    for qtype in BLOCK_TYPES:
        if qtype in QUANTIZED_BY_GGUF:
            weights = rng.standard_normal((ROWS, K)).astype(np.float32) * 0.05
            data = quants.quantize(weights, qtype)
        else:
            data = _k_quant_blocks(qtype, rng)
        writer.add_tensor(f"w.{qtype.name}", data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def read_tensors(path: Path) -> dict[Q, np.ndarray]:
    reader = GGUFReader(str(path))
    assert isinstance(reader.tensors[0].data, np.memmap)  # read through mmap, never copied whole
    return {t.tensor_type: t.data for t in reader.tensors}


def rounding_bound(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """|x| @ |W|.T: the scale of each output's rounding error (a sum of products)."""
    return x.abs() @ weight.abs().T


FEW_ROWS = 8  # below this many input rows the block kernel rounds its inputs to int16 (kernels/gguf_rows.cpp)


def kernel_bound(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """How far the block kernel's x @ W.T may be from the dense fp32 one: fp32 summation order, and, for fewer than
    FEW_ROWS rows, each input rounded to a step of its block's max|x| / 32767 (half a step, and fp32's rounding of
    the step)."""
    bound = 1e-5 * rounding_bound(x, weight) + 1e-7
    if x.shape[0] >= FEW_ROWS:
        return bound
    top = x.abs().view(x.shape[0], -1, 32).amax(-1, keepdim=True)
    step = (top * (0.502 / 32767)).expand(-1, -1, 32).reshape(x.shape)
    return bound + step @ weight.abs().T
