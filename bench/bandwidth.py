"""A quick memory-bandwidth probe (how fast torch streams a matrix far larger than the caches through a mat-vec),
and the bytes of weights one decoded token reads."""

from __future__ import annotations

import time
from typing import Any

import torch


def matvec_bandwidth_gb_s(
    rows: int = 8192, cols: int = 8192, repeats: int = 12, dtype: torch.dtype = torch.float32
) -> float:
    """GB/s read by `matrix @ vector`: the access pattern of batch-1 decode (every weight read once per token).

    The best of `repeats` is taken, as the machine may be shared: it is the bandwidth one stream can get.
    """
    matrix = torch.randn(rows, cols).to(dtype)
    vector = torch.randn(cols).to(dtype)
    nbytes: int = matrix.numel() * matrix.element_size()
    best = float("inf")
    with torch.inference_mode():
        torch.mv(matrix, vector)  # first touch and thread-pool start-up out of the timing
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mv(matrix, vector)
            best = min(best, time.perf_counter() - started)
    return nbytes / best / 1e9


def parameter_bytes(model: Any) -> int:
    """Bytes of weights one decoded token reads: parameters and buffers as stored (packed 4-bit and int8 count as
    stored; tied weights once), less the input embedding table when the output head does not share it (a lookup
    reads one row of it, not the table)."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    total: int = sum(t.numel() * t.element_size() for t in tensors.values())
    embedding = getattr(model.get_input_embeddings(), "weight", None)  # None: rows read from the int4 output head
    if embedding is not None and getattr(model.get_output_embeddings(), "weight", None) is not embedding:
        total -= embedding.numel() * embedding.element_size()
    return total
