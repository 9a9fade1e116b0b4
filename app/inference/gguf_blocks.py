"""GGUF's quantized blocks as groups of 32 four-bit codes with one scale and one zero each (torch's int4 layout).

torch's weight-only int4 kernels read a weight as groups of 32 codes q in 0..15 along the input dimension, each
group with a scale s and a zero z: w = (q - 8) * s + z. GGUF's 4-bit blocks are that layout already, so a code is
carried over as it is and only the block's constants are rewritten (llama.cpp's ggml-quants.c gives each format):

    Q4_0   w = d * (q - 8)                     s = d           z = 0
    Q4_1   w = d * q + m                       s = d           z = m + 8d
    Q4_K   w = (d * sc) * q - (dmin * mn)      s = d * sc      z = 8 * d * sc - dmin * mn   (per 32-weight sub-block)

Wider codes split into two planes of four bits, high and low, each a full int4 weight over the same input; their
sum is the weight, exactly: a Q8_0 code q = 16 * hi + lo (hi in -8..7, lo in 0..15), a 5-bit code q = 16 * h + l.
Int4Linear runs both planes in one kernel call over the input repeated twice (app/inference/int4_linear.py).

    Q8_0   w = d * q                 hi: s = 16d, z = 0 (codes hi + 8)        lo: s = d, z = 8d
    Q5_0   w = d * (q - 16)          hi: s = 16d, z = 128d (codes h in 0..1)   lo: s = d, z = -8d
    Q5_1   w = d * q + m             hi: s = 16d, z = 128d                     lo: s = d, z = 8d + m
    Q5_K   w = (d*sc) * q - dmin*mn  hi: s = 16 d sc, z = 128 d sc             lo: s = d sc, z = 8 d sc - dmin mn

Q6_K keeps one scale per 16 weights, which no 32-weight int4 group can hold. ClawBot's CPU kernel reads it as
blocks of 32 8-bit codes (q - 32) with two scales, d * sc of each half (`code_blocks`, a `pair`); for torch's int4
kernels it is dequantized and kept dense. The other formats (Q2_K, Q3_K, the IQ family) have no such form: those
are dequantized by the `gguf` package and kept dense (`dense_rows`).

Everything here works on row slices of the memory-mapped file (`GGUFReader` maps it), so a large table is unpacked
a chunk of rows at a time and the file itself is never read whole into memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES

GROUP = 32  # weights per scale and zero in torch's int4 kernels, and in every block type unpacked here
# Block types whose weights become int4 groups, and how many 4-bit planes each needs.
PLANES = {Q.Q4_0: 1, Q.Q4_1: 1, Q.Q4_K: 1, Q.Q8_0: 2, Q.Q5_0: 2, Q.Q5_1: 2, Q.Q5_K: 2}
# Block types with a code-block form (ClawBot's CPU kernel): every int4 type, and Q6_K with a scale per 16 weights.
BLOCK_TYPES = (*PLANES, Q.Q6_K)
DENSE_TYPES = (Q.F32, Q.F16, Q.BF16)


@dataclass
class Int4Groups:
    """A weight [rows, K] as `planes` int4 weights side by side: codes [rows, planes * K] in 0..15, and per group of
    32 codes a scale and a zero ([rows, planes * K / 32], fp32). The weight is the sum over planes of (q - 8) * s + z."""

    codes: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray
    planes: int

    def dequantize(self) -> np.ndarray:
        """The weight [rows, K] in fp32, as the int4 kernels compute it (for checks and the dense fallback)."""
        rows, width = self.codes.shape
        groups = self.codes.reshape(rows, -1, GROUP).astype(np.float32) - 8
        w = (groups * self.scales[..., None] + self.zeros[..., None]).reshape(rows, self.planes, width // self.planes)
        return w.sum(axis=1)


def is_int4(qtype: Q) -> bool:
    return qtype in PLANES


def _f16(raw: np.ndarray) -> np.ndarray:
    """Little-endian fp16 fields (the trailing axis holds 2 bytes) as fp32, without the trailing axis."""
    return np.ascontiguousarray(raw).view(np.float16)[..., 0].astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """16 bytes -> 32 codes: element j is byte j's low nibble, element j + 16 its high one (Q4_0/Q4_1/Q5_x order)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """A little-endian uint32 bit field per block (trailing axis: 4 bytes) -> its 32 bits, bit j for element j."""
    bits = np.ascontiguousarray(qh).view("<u4")[..., 0]
    return ((bits[..., None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)


def _join(rows: int, planes: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Int4Groups:
    """Planes given as (codes [rows, blocks, 32], scales [rows, blocks], zeros) -> Int4Groups, planes side by side."""
    codes = np.concatenate([c.reshape(rows, -1) for c, _, _ in planes], axis=1).astype(np.uint8)
    scales = np.concatenate([s.reshape(rows, -1) for _, s, _ in planes], axis=1).astype(np.float32)
    zeros = np.concatenate([np.broadcast_to(z, s.shape).reshape(rows, -1) for _, s, z in planes], axis=1)
    return Int4Groups(codes, scales, zeros.astype(np.float32), len(planes))


def _k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 bytes of 6-bit sub-block scales and mins -> ([..., 8], [..., 8]) as fp32."""
    lead = packed.shape[:-1]
    sc, mn = quants.Q4_K.get_scale_min(np.ascontiguousarray(packed).reshape(-1, 12))
    return sc.reshape(*lead, 8).astype(np.float32), mn.reshape(*lead, 8).astype(np.float32)


def _blocks(qtype: Q, raw: np.ndarray, form: str, types: Iterable[Q] = PLANES) -> tuple[int, np.ndarray]:
    """Rows of raw blocks of a type in `types` -> (rows, [rows, blocks, bytes per block])."""
    if qtype not in types:
        raise ValueError(f"{qtype.name} blocks have no {form} form; dequantize them with dense_rows")
    _, size = GGML_QUANT_SIZES[qtype]
    rows = raw.shape[0]
    return rows, raw.reshape(rows, -1, size)


def int4_groups(qtype: Q, raw: np.ndarray) -> Int4Groups:
    """Rows of raw GGUF blocks ([rows, bytes per row], uint8) -> their int4 groups. Codes are copied unchanged."""
    rows, b = _blocks(qtype, raw, "int4")
    if qtype == Q.Q4_0:
        d = _f16(b[..., 0:2])
        return _join(rows, [(_nibbles(b[..., 2:]), d, np.zeros_like(d))])
    if qtype == Q.Q4_1:
        d, m = _f16(b[..., 0:2]), _f16(b[..., 2:4])
        return _join(rows, [(_nibbles(b[..., 4:]), d, m + 8 * d)])
    if qtype == Q.Q8_0:
        d = _f16(b[..., 0:2])
        q = np.ascontiguousarray(b[..., 2:]).view(np.int8)
        hi, lo = (q >> 4) + 8, q.view(np.uint8) & 0x0F
        return _join(rows, [(hi, 16 * d, np.zeros_like(d)), (lo, d, 8 * d)])
    if qtype in (Q.Q5_0, Q.Q5_1):
        d = _f16(b[..., 0:2])
        m = _f16(b[..., 2:4]) if qtype == Q.Q5_1 else -16 * d
        start = 4 if qtype == Q.Q5_1 else 2
        h, lo = _high_bits(b[..., start : start + 4]), _nibbles(b[..., start + 4 :])
        return _join(rows, [(h, 16 * d, 128 * d), (lo, d, 8 * d + m)])
    # Q4_K and Q5_K: superblocks of 256 weights as 8 sub-blocks of 32, each with a 6-bit scale and min.
    d, dmin = _f16(b[..., 0:2])[..., None], _f16(b[..., 2:4])[..., None]
    sc, mn = _k_scales(b[..., 4:16])
    scale, offset = d * sc, dmin * mn  # [rows, superblocks, 8]
    if qtype == Q.Q4_K:
        qs = b[..., 16:].reshape(rows, -1, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 1, 2, 1)
        codes = (qs & 0x0F).reshape(rows, -1, 8, 32)
        return _join(rows, [(codes, scale, 8 * scale - offset)])
    qh, qs = b[..., 16:48], b[..., 48:]
    lo = qs.reshape(rows, -1, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 1, 2, 1)
    lo = (lo & 0x0F).reshape(rows, -1, 8, 32)
    h = (qh.reshape(rows, -1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1)) & 1
    return _join(rows, [(h, 16 * scale, 128 * scale), (lo, scale, 8 * scale - offset)])


@dataclass
class CodeBlocks:
    """A weight [rows, K] as blocks of 32 codes with one scale d and one offset m each, w = d * q + m: the form
    ClawBot's CPU kernel reads (app/inference/block_linear.py). codes [rows, K / 32, 32] (0..15, or -128..127 where
    `byte`), d and m [rows, K / 32] fp32. Every value is the file's own: a code as stored, a constant the fp16 field
    or the exact fp32 product the format defines (Q4_K's d * sc), so d * q + m is the gguf package's dequantization.
    A `pair` (Q6_K) has two scales a block, d [rows, K / 32, 2]: the first 16 codes' and the last 16's."""

    codes: np.ndarray
    d: np.ndarray
    m: np.ndarray
    byte: bool
    pair: bool = False


def _five_bits(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return low.astype(np.int16) | (high.astype(np.int16) << 4)


def code_blocks(qtype: Q, raw: np.ndarray) -> CodeBlocks:
    """Rows of raw GGUF blocks ([rows, bytes per row], uint8) -> CodeBlocks, for every type BLOCK_TYPES lists."""
    rows, b = _blocks(qtype, raw, "code-block", BLOCK_TYPES)
    if qtype == Q.Q6_K:
        return _q6_k_blocks(rows, b)
    if qtype in (Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.Q5_0, Q.Q5_1):
        d = _f16(b[..., 0:2])
        m = _f16(b[..., 2:4]) if qtype in (Q.Q4_1, Q.Q5_1) else np.zeros_like(d)
        if qtype == Q.Q4_0:
            return CodeBlocks(_nibbles(b[..., 2:]), d, -8 * d, False)
        if qtype == Q.Q4_1:
            return CodeBlocks(_nibbles(b[..., 4:]), d, m, False)
        if qtype == Q.Q8_0:
            return CodeBlocks(np.ascontiguousarray(b[..., 2:]).view(np.int8).astype(np.int16), d, m, True)
        start = 4 if qtype == Q.Q5_1 else 2
        q = _five_bits(_nibbles(b[..., start + 4 :]), _high_bits(b[..., start : start + 4]))
        return CodeBlocks(q - 16 if qtype == Q.Q5_0 else q, d, m, True)
    # Q4_K and Q5_K: superblocks of 256 weights as 8 sub-blocks of 32, each with a 6-bit scale and min.
    d, dmin = _f16(b[..., 0:2])[..., None], _f16(b[..., 2:4])[..., None]
    sc, mn = _k_scales(b[..., 4:16])
    scale, offset = (d * sc).reshape(rows, -1), (dmin * mn).reshape(rows, -1)  # exact products in fp32
    qs = b[..., 16:] if qtype == Q.Q4_K else b[..., 48:]
    low = qs.reshape(rows, -1, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 1, 2, 1)
    low = (low & 0x0F).reshape(rows, -1, 32)
    if qtype == Q.Q4_K:
        return CodeBlocks(low, scale, -offset, False)
    qh = b[..., 16:48].reshape(rows, -1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1)
    return CodeBlocks(_five_bits(low, (qh & 1).reshape(rows, -1, 32)), scale, -offset, True)


def _q6_k_blocks(rows: int, b: np.ndarray) -> CodeBlocks:
    """Q6_K superblocks of 256 weights (ql[128] low nibbles, qh[64] high bit pairs, scales[16] int8, d fp16): 16
    sub-blocks of 16 weights, w = (d * sc) * (q - 32). Bits unpacked as the gguf package's dequantization does."""
    ql, qh = b[..., :128], b[..., 128:192]
    sc = np.ascontiguousarray(b[..., 192:208]).view(np.int8).astype(np.float32)
    d = _f16(b[..., 208:210])[..., None]
    low = ql.reshape(rows, -1, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 1, 2, 1)
    low = (low & 0x0F).reshape(rows, -1, 2, 4, 32)
    high = qh.reshape(rows, -1, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 1, 4, 1)
    high = (high & 0x03).reshape(rows, -1, 2, 4, 32)
    q = (low | (high << 4)).astype(np.int16) - 32
    scale = (d * sc).reshape(rows, -1, 2)  # exact products in fp32: an fp16 times an int8
    return CodeBlocks(q.reshape(rows, -1, 32), scale, np.zeros(scale.shape[:2], np.float32), True, pair=True)


def dense_rows(qtype: Q, raw: np.ndarray) -> np.ndarray:
    """Rows of a tensor of any GGUF type as fp32 [rows, K], by the gguf package's own dequantization."""
    return np.asarray(quants.dequantize(raw, qtype), dtype=np.float32)
