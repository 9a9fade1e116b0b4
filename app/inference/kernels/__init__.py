"""ClawBot's own CPU kernels, compiled from C++ once per machine and loaded as torch ops (`torch.ops.clawbot_gguf`).

`available()` says whether this process can use them: an x86-64 CPU with AVX2, FMA and F16C, and a library built for
this source and this torch, found in the image (`/opt/clawbot/kernels`, built when the image is) or built on first
use with the system's g++ into the kernel cache (`CLAWBOT_KERNEL_DIR`, else `build/kernels` in a checkout, else
`~/.cache/clawbot/kernels`). Where they are not available the model loader falls back to torch's own int4 kernel,
and the startup log says why.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger("clawbot.model")
_lock = threading.Lock()
_state: dict[str, Any] = {}


def load() -> str | None:
    """Load the kernels into this process (building them if needed); None on success, else why not (logged once)."""
    with _lock:
        if "reason" not in _state:
            _state["reason"] = _load()
            if _state["reason"]:
                log.warning(
                    "ClawBot's CPU kernels are not available; torch's int4 kernel serves GGUF weights",
                    extra={"reason": _state["reason"]},
                )
        reason: str | None = _state["reason"]
        return reason


def _load() -> str | None:
    import torch

    from app.inference.kernels.build import KernelBuildError, library_path, supported_cpu

    why = supported_cpu()
    if why:
        return why
    try:
        torch.ops.load_library(str(library_path()))
    except (KernelBuildError, OSError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {str(exc)[:400]}"
    return None


def available() -> bool:
    return load() is None


def ops() -> Any:
    """torch.ops.clawbot_gguf (mm, dequantize), loading the library on first use; RuntimeError where it cannot be."""
    found = _state.get("ops")
    if found is None:
        why = load()
        if why:
            raise RuntimeError(f"ClawBot's CPU kernels are not available here: {why}")
        import torch

        found = _state["ops"] = torch.ops.clawbot_gguf
    return found
