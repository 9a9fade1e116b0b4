"""scripts/gpu-check's logic without a GPU: it refuses to run, and its table and verdict on canned results."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu_check

ROOT = Path(__file__).resolve().parents[2]
CHECKS = [
    {
        "mode": "none",
        "applied": "none",
        "device": "cuda:0",
        "load_s": 3.0,
        "memory_bytes": 270e6,
        "tok_s": 80.0,
        "answer": "The capital of France is Paris.",
        "answers": True,
        "linear_kinds": ["Linear"],
    },
    {
        "mode": "gguf",
        "applied": "gguf:q4_1",
        "device": "cuda:0",
        "load_s": 4.0,
        "memory_bytes": 102e6,
        "tok_s": 95.0,
        "answer": "Paris",
        "answers": True,
        "linear_kinds": ["FusedPart", "Int4Linear"],
    },
]
PEER = {
    "quantization": "auto",
    "loaded_quantization": "gguf:q4_1",
    "clawbot": {"one_at_a_time": {"tok_s": 120.0}, "concurrent": {"tok_s": 900.0}, "memory_bytes": 102e6},
}


def test_the_table_has_a_row_per_mode_and_the_peer_run() -> None:
    lines = gpu_check.table([*CHECKS, {"mode": "nf4", "error": "ModelLoadError: no bitsandbytes"}], PEER).splitlines()
    assert lines[2].startswith("| none on CUDA | none | yes | 80.0 | 270 MB |")
    assert "gguf:q4_1" in lines[3] and "Int4Linear" in lines[3]
    assert lines[4].startswith("| nf4 on CUDA | — | FAILED") and "no bitsandbytes" in lines[4]
    assert "one stream 120.0, 32 clients 900.0" in lines[5]


def test_every_mode_must_answer_and_the_peer_run_must_finish() -> None:
    assert gpu_check.all_passed(CHECKS, PEER)
    assert not gpu_check.all_passed([*CHECKS[:1], {**CHECKS[1], "answers": False}], PEER)
    assert not gpu_check.all_passed(CHECKS, {**PEER, "failed": "RuntimeError: boom"})
    assert not gpu_check.all_passed(CHECKS, None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check would run for real")
def test_without_a_gpu_it_says_so_and_exits_2() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--no-peer"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "no CUDA device" in done.stderr


def test_modes_are_checked_before_anything_loads() -> None:
    with pytest.raises(SystemExit):
        gpu_check.main(["--modes", "none,fp8"])
