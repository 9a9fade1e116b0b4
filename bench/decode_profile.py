"""Where one decode step's time goes at batch 1: how many ops it dispatches, the matmul kernels' time, the rest.

`decode_step_profile` prefills a short prompt, then runs decode steps of one row through the model's forward (what
the engine calls) under torch.profiler. Ops are the top-level aten and clawbot_gguf calls (what Python dispatches:
on ClawBot's block kernel a whole decode step of the layers is one op, decode_layers); matmul time is the self time
of the kernels that read weights (int4, int8, oneDNN/MKL matmuls, and ClawBot's, including the profiler scopes
decode_layers opens around its matmuls); everything else is the profiled step's wall time less that: attention,
small ops, dispatch, Python, and the profiler's own cost. `wall_ms` is a step without the profiler.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import DynamicCache

OP_NAMESPACES = ("aten::", "clawbot_gguf::")  # what Python dispatches: torch's ops and ClawBot's C++ ones
MATMUL_KERNELS = (
    "_weight_int4pack_mm",
    "clawbot_gguf::mm",
    "_weight_int8pack_mm",
    "mkldnn::_linear_pointwise",
    "aten::addmm",
    "aten::mm",
    "aten::bmm",
    "bitsandbytes",
)


def decode_step_profile(loaded: Any, steps: int = 16, prompt: str = "Tell me about the sea.") -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    model, tok = loaded.model, loaded.tokenizer
    ids = tok(prompt, return_tensors="pt").input_ids.to(loaded.device)
    with torch.inference_mode():
        cache = DynamicCache()
        width = ids.shape[1]
        model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)

        def step() -> None:
            nonlocal width
            mask = torch.ones((1, width + 1), dtype=torch.long, device=loaded.device)
            model(
                input_ids=ids[:, -1:],
                attention_mask=mask,
                position_ids=torch.tensor([[width]], device=loaded.device),
                past_key_values=cache,
                use_cache=True,
            )
            width += 1

        for _ in range(4):
            step()  # warm-up
        started = time.perf_counter()
        for _ in range(steps):
            step()
        wall_ms = (time.perf_counter() - started) * 1000 / steps
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            started = time.perf_counter()
            for _ in range(steps):
                step()
            profiled_ms = (time.perf_counter() - started) * 1000 / steps
    events = [e for e in prof.events() if e.name.startswith(OP_NAMESPACES) and e.cpu_parent is None]
    matmul_us = sum(e.self_cpu_time_total for e in prof.events() if any(k in e.name for k in MATMUL_KERNELS))
    matmul_ms = matmul_us / 1000 / steps
    top: dict[str, float] = {}
    for e in prof.key_averages():
        top[e.key] = e.self_cpu_time_total / 1000 / steps
    return {
        "steps": steps,
        "wall_ms": wall_ms,
        "profiled_ms": profiled_ms,
        "ops": round(len(events) / steps),
        "matmul_ms": matmul_ms,
        "other_ms": max(profiled_ms - matmul_ms, 0.0),
        "top_ops_ms": dict(sorted(top.items(), key=lambda kv: -kv[1])[:12]),
    }
