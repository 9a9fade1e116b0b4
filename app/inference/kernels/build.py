"""Compiles the C++ kernels in this folder into a shared library for the installed torch, once, and finds it again.

    python -m app.inference.kernels.build [--out DIR]     # build now (the image does this), print the library's path

The library's name carries a hash of the source, the compiler flags and torch's version, so a changed kernel or a
new torch builds a new library instead of loading a stale one. Builds are serialized with a file lock, so several
processes starting at once (a test run, replicas on one node) compile once. Compiling takes about 15 s.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).parent
SOURCES = (HERE / "gguf_cpu.cpp", HERE / "gguf_rows.cpp", HERE / "decode_ops.cpp", HERE / "decode_layers.cpp")
HEADERS = (HERE / "gguf_cpu.h", HERE / "gguf_layout.h", HERE / "decode_ops.h")
IMAGE_DIR = Path("/opt/clawbot/kernels")
# -ffp-contract=off: a * b + c stays two roundings where the C++ writes it so (dequantize is exact d * q + m); the
# kernel's fused multiply-adds are written as intrinsics. -fopenmp: at::parallel_for is header code, and without
# it the loops would run on one thread; the library then uses torch's own libgomp (same soname, loaded first).
FLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared", "-std=c++17", "-w")
REQUIRED_FLAGS = ("avx2", "fma", "f16c")


class KernelBuildError(RuntimeError):
    """The kernels could not be built here; the message says what failed (no compiler, a compile error)."""


def supported_cpu() -> str | None:
    """None where the kernels can run, else why not."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"the kernels are x86-64 code and this machine is {platform.machine()}"
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError as exc:
        return f"cannot read /proc/cpuinfo to check for AVX2: {exc}"
    missing = [f for f in REQUIRED_FLAGS if f not in flags]
    return f"this CPU lacks {', '.join(missing)}" if missing else None


def _torch_dir() -> Path:
    import torch

    return Path(torch.__file__).parent


def _fingerprint() -> str:
    import torch

    digest = hashlib.sha256()
    for path in (*SOURCES, *HEADERS):
        digest.update(path.read_bytes())
    digest.update(" ".join(FLAGS).encode())
    digest.update(torch.__version__.encode())
    return digest.hexdigest()[:16]


def library_name() -> str:
    return f"clawbot_gguf-{_fingerprint()}.so"


def cache_dir() -> Path:
    if os.environ.get("CLAWBOT_KERNEL_DIR"):
        return Path(os.environ["CLAWBOT_KERNEL_DIR"])
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / ".git").exists() and os.access(checkout, os.W_OK):
        return checkout / "build" / "kernels"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clawbot" / "kernels"


def library_path() -> Path:
    """The built library for this source and torch: the image's, the cache's, or one built now."""
    name = library_name()
    for directory in (IMAGE_DIR, cache_dir()):
        if (directory / name).is_file():
            return directory / name
    return build(cache_dir())


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".build.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def command(out: Path) -> list[str]:
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise KernelBuildError("no C++ compiler (g++) on PATH; install g++ or set CXX")
    torch_dir = _torch_dir()
    import torch

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [
        compiler,
        *FLAGS,
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        f"-I{torch_dir / 'include'}",
        f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
        *(str(path) for path in SOURCES),
        "-o",
        str(out),
        f"-L{torch_dir / 'lib'}",
        "-ltorch",
        "-ltorch_cpu",
        "-lc10",
        f"-Wl,-rpath,{torch_dir / 'lib'}",
    ]


def build(directory: Path) -> Path:
    """Compile into `directory` (under its lock) unless the library is already there; returns its path."""
    target = directory / library_name()
    with _locked(directory):
        if target.is_file():
            return target
        with tempfile.TemporaryDirectory(dir=directory) as staging:
            out = Path(staging) / target.name
            try:
                result = subprocess.run(command(out), capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise KernelBuildError(f"the compiler did not run: {exc}") from exc
            if result.returncode != 0:
                names = ", ".join(path.name for path in SOURCES)
                raise KernelBuildError(f"compiling {names} failed: {result.stderr.strip()[-2000:]}")
            os.replace(out, target)  # whole or not at all: another process never loads half a library
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="directory for the library (default: the kernel cache)")
    args = parser.parse_args(argv)
    why = supported_cpu()
    if why:
        print(f"not built: {why}", file=sys.stderr)
        return 0  # an arm64 image simply goes without; the loader falls back to torch's kernel
    print(build(args.out or cache_dir()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
