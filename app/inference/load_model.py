"""CLI: prepare MODEL_PATH once (pack a GGUF's blocks, or convert/fetch a safetensors directory), then load it the
way the server does.

    python -m app.load_model --model-path SRC [--out DIR] [--quantization auto|gguf|nf4|int8|none]

In gguf mode (what auto picks for a GGUF) the packed int4 weights land in $DATA_DIR/models/<name>-int4-<device>/;
in the other modes, without --out, a conversion lands in $DATA_DIR/models/<name>/. Either is the cache the server
reuses on its next start. Exit status 2 when the model cannot be resolved or loaded.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from app.inference.loader import (
    ModelLoadError,
    load_model,
    locate,
    resolve_model_dir,
    resolve_quantization,
    target_device,
)
from app.observability.logs import configure_logging
from app.settings import EMBEDDED_MODEL, QUANTIZATIONS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m app.load_model",
        description="Convert a GGUF (or fetch a hub model) to safetensors once, then check that it loads.",
    )
    p.add_argument(
        "--model-path",
        default=os.environ.get("MODEL_PATH") or EMBEDDED_MODEL,
        help=f"'{EMBEDDED_MODEL}', a .gguf file, a model directory or a hub id (default: $MODEL_PATH or %(default)s)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="write the converted model here instead of $DATA_DIR/models/<name>/"
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("DATA_DIR") or "/app/data"),
        help="the service's DATA_DIR, whose models/ holds the cache (default: $DATA_DIR or %(default)s)",
    )
    p.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        default=os.environ.get("QUANTIZATION") or "auto",
        help="how to load it for the check (default: $QUANTIZATION or %(default)s)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--no-load", action="store_true", help="only convert or download; skip the load check")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        configure_logging()
    hub_token = os.environ.get("HF_TOKEN") or None
    started = time.perf_counter()
    try:
        mode = resolve_quantization(args.quantization, locate(args.model_path), target_device(args.device))
        if mode == "gguf" and args.out is None:
            # The file's own blocks: load_model packs them once into DATA_DIR, which is the preparation.
            loaded = load_model(args.model_path, args.data_dir, mode, device=args.device, hub_token=hub_token)
            print(
                f"loaded {loaded.name}: quantization={loaded.quantization} device={loaded.device} "
                f"memory={loaded.memory_bytes} bytes ({loaded.memory_bytes / 2**20:.1f} MiB) "
                f"context_window={loaded.context_window} in {time.perf_counter() - started:.1f}s"
            )
            print(f"packed in {loaded.source}; the server reuses it on its next start with DATA_DIR={args.data_dir}")
            return 0
        source = resolve_model_dir(args.model_path, args.data_dir, hub_token=hub_token, out=args.out)
        prepared_s = time.perf_counter() - started
        print(f"model {args.model_path} -> safetensors at {source} ({prepared_s:.1f}s)")
        if args.out is not None and source.resolve() != args.out.resolve():
            print(
                f"note: {args.model_path} is already a safetensors model directory; it is used in place, --out is unused"
            )
        if args.no_load:
            return 0
        loaded = load_model(
            str(source), args.data_dir, "none" if mode == "gguf" else mode, device=args.device, hub_token=hub_token
        )
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"loaded {loaded.name}: quantization={loaded.quantization} device={loaded.device} "
        f"dtype={str(loaded.dtype).removeprefix('torch.')} memory={loaded.memory_bytes} bytes "
        f"({loaded.memory_bytes / 2**20:.1f} MiB) context_window={loaded.context_window} "
        f"in {time.perf_counter() - started:.1f}s"
    )
    if args.out is not None:
        print(f"serve it with MODEL_PATH={source}")
    elif source.resolve().is_relative_to((args.data_dir / "models").resolve()):
        print(f"cached in {source}; the server reuses it on its next start with DATA_DIR={args.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
