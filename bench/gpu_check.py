"""On a machine with a GPU: the embedded model loaded with none, nf4 and gguf on CUDA, each asked a question, then the
ClawBot side of bench/peer.py (QUANTIZATION=auto, which is gguf for the embedded GGUF), all in one table.

    scripts/gpu-check                 # or: .venv/bin/python bench/gpu_check.py [--modes none,nf4,gguf]

Exits 2 without a CUDA device. The table and the checks are plain functions over plain results, so the suite runs
them without a GPU (tests/bench/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("none", "nf4", "gguf")
QUESTION = "What is the capital of France?"
EXPECTED = "Paris"


def check_mode(mode: str, data_dir: Path, device: str = "cuda") -> dict[str, Any]:
    """Load the embedded model in `mode` on `device`, answer QUESTION greedily; what a row of the table shows."""
    import torch

    from app.inference.loader import load_model
    from app.settings import EMBEDDED_MODEL

    started = time.perf_counter()
    loaded = load_model(EMBEDDED_MODEL, data_dir, mode, device=device, progress=False)
    load_s = time.perf_counter() - started
    tok = loaded.tokenizer
    enc: Any = tok.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(loaded.device)
    with torch.inference_mode():
        loaded.model.generate(**enc, max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id)  # warm-up
        started = time.perf_counter()
        out = loaded.model.generate(
            **enc, max_new_tokens=24, do_sample=False, repetition_penalty=1.1, pad_token_id=tok.pad_token_id
        )
        seconds = time.perf_counter() - started
    new = out[0, enc["input_ids"].shape[1] :]
    answer = str(tok.decode(new, skip_special_tokens=True))
    kernels = sorted({type(m).__name__ for m in loaded.model.modules() if "Linear" in type(m).__name__})
    return {
        "mode": mode,
        "applied": loaded.quantization,
        "device": str(loaded.device),
        "load_s": load_s,
        "memory_bytes": loaded.memory_bytes,
        "tok_s": len(new) / seconds,
        "answer": answer,
        "answers": EXPECTED in answer,
        "linear_kinds": kernels,
    }


def table(checks: list[dict[str, Any]], peer: dict[str, Any] | None) -> str:
    lines = [
        "| check | applied | answers | tok/s (generate) | memory | load | note |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in checks:
        if "error" in c:
            lines.append(f"| {c['mode']} on CUDA | — | FAILED | — | — | — | {c['error'][:120]} |")
            continue
        lines.append(
            f"| {c['mode']} on CUDA | {c['applied']} | {'yes' if c['answers'] else 'NO'} | {c['tok_s']:.1f} | "
            f"{c['memory_bytes'] / 1e6:.0f} MB | {c['load_s']:.1f} s | {', '.join(c['linear_kinds'])}: {c['answer'][:60]!r} |"
        )
    if peer is not None:
        claw = peer.get("clawbot", {})
        one, batch = claw.get("one_at_a_time", {}).get("tok_s"), claw.get("concurrent", {}).get("tok_s")
        lines.append(
            f"| bench/peer.py, ClawBot side (QUANTIZATION={peer.get('quantization')}) | {peer.get('loaded_quantization', '—')} "
            f"| {'yes' if 'failed' not in peer else 'FAILED'} | one stream {one:.1f}, 32 clients {batch:.1f} "
            f"| {claw.get('memory_bytes', 0) / 1e6:.0f} MB | — | {peer.get('failed', '')} |"
            if one is not None and batch is not None
            else f"| bench/peer.py, ClawBot side | — | FAILED | — | — | — | {peer.get('failed', 'no figures')} |"
        )
    return "\n".join(lines)


def all_passed(checks: list[dict[str, Any]], peer: dict[str, Any] | None) -> bool:
    return all(c.get("answers") for c in checks) and peer is not None and "failed" not in peer


def run_peer(data_dir: Path) -> dict[str, Any] | None:
    out = data_dir / "gpu-check-peer.json"
    env = {**os.environ, "QUANTIZATION": os.environ.get("QUANTIZATION", "auto")}
    command = [
        sys.executable,
        str(ROOT / "bench" / "peer.py"),
        "--no-llama",
        "--scenarios",
        "one,batch",
        "--data-dir",
        str(data_dir),
        "--json",
        str(out),
    ]
    subprocess.run(command, cwd=ROOT, env=env, check=False)
    return json.loads(out.read_text()) if out.is_file() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "build" / "gpu-check-data")
    parser.add_argument("--no-peer", action="store_true", help="skip the bench/peer.py run")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if any(m not in MODES for m in modes):
        parser.error(f"--modes takes a subset of {','.join(MODES)}, got {args.modes}")
    import torch

    if not torch.cuda.is_available():
        print(
            "gpu-check: no CUDA device here (torch.cuda.is_available() is False); run it on a machine with a GPU",
            file=sys.stderr,
        )
        return 2
    from app.inference.own_thread import run_in_own_thread

    args.data_dir.mkdir(parents=True, exist_ok=True)
    print(f"gpu-check on {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    checks = []
    for mode in modes:
        print(f"[{mode}] loading the embedded model on CUDA ...", flush=True)
        try:
            checks.append(run_in_own_thread(check_mode, mode, args.data_dir))
        except Exception as exc:
            checks.append({"mode": mode, "error": f"{type(exc).__name__}: {exc}"})
    peer = None if args.no_peer else run_peer(args.data_dir)
    print("\n" + table(checks, peer), flush=True)
    answered = all(c.get("answers") for c in checks)
    return 0 if (answered if args.no_peer else all_passed(checks, peer)) else 1


if __name__ == "__main__":
    sys.exit(main())
