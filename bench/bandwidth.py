"""A quick memory-bandwidth probe: how fast torch streams a matrix far larger than the caches through a mat-vec."""
from __future__ import annotations

import time

import torch


def matvec_bandwidth_gb_s(rows: int = 8192, cols: int = 8192, repeats: int = 12, dtype: torch.dtype = torch.float32) -> float:
    """GB/s read by `matrix @ vector`: the access pattern of batch-1 decode (every weight read once per token).

    The best of `repeats` is taken, as the machine may be shared: it is the bandwidth one stream can get.
    """
    matrix = torch.randn(rows, cols).to(dtype)
    vector = torch.randn(cols).to(dtype)
    nbytes = matrix.numel() * matrix.element_size()
    best = float("inf")
    with torch.inference_mode():
        torch.mv(matrix, vector)  # first touch and thread-pool start-up out of the timing
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mv(matrix, vector)
            best = min(best, time.perf_counter() - started)
    return nbytes / best / 1e9
