"""The lean llama forward computes what transformers' own forward computes over the same quantized weights:
prefill of a left-padded batch, then decode steps, with the cache the engine uses (a DynamicCache)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from app.inference.lean_llama import LeanLlama, can_install
from app.inference.loader import LoadedModel


def _steps(
    forward: object, ids: torch.Tensor, mask: torch.Tensor, steps: int, cache: DynamicCache | None = None
) -> list[torch.Tensor]:
    """Prefill, then `steps` greedy decode steps; the logits of each call."""
    cache = DynamicCache() if cache is None else cache
    out = []
    with torch.inference_mode():
        logits = forward(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True).logits  # type: ignore[operator]
        out.append(logits[:, -1])
        for _ in range(steps):
            token = out[-1].argmax(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            position = mask.sum(dim=1, keepdim=True) - 1
            logits = forward(  # type: ignore[operator]
                input_ids=token, attention_mask=mask, position_ids=position, past_key_values=cache, use_cache=True
            ).logits
            out.append(logits[:, -1])
    return out


def test_the_lean_forward_is_installed_and_equals_transformers_forward(smollm2: LoadedModel) -> None:
    model = smollm2.model
    assert isinstance(model.forward, LeanLlama) and can_install(model)
    tok = smollm2.tokenizer
    texts = ["What is the capital of France?", "Hi"]
    enc = tok(texts, return_tensors="pt", padding=True)  # left padding, as the engine batches
    assert enc.attention_mask[1, 0] == 0
    lean = _steps(model.forward, enc.input_ids, enc.attention_mask, 6)
    original = _steps(model.forward.original, enc.input_ids, enc.attention_mask, 6)
    # Prefill (8 rows and more) is fp32 throughout. A decode step's few rows round each matmul's inputs to 16 bits
    # (kernels/gguf_rows.cpp), where the two forwards' norms may differ in the last bit: about 1e-2 on logits of ~35.
    for step, (ours, theirs) in enumerate(zip(lean, original, strict=True)):
        torch.testing.assert_close(ours.float(), theirs.float(), atol=2e-3 if step == 0 else 2e-2, rtol=1e-3)
        assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


@pytest.mark.parametrize("texts", [["What is the capital of France?", "Hi"], ["Hi"]], ids=["padded", "one"])
def test_a_decode_step_in_one_op_equals_the_layer_by_layer_step(
    smollm2: LoadedModel, texts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the block kernel a decode step is one C++ op (kernels/decode_layers.cpp): attention over the cache's room,
    with the padding mask and grouped kv heads, and the new keys and values left in the cache."""
    lean = smollm2.model.forward
    assert isinstance(lean, LeanLlama) and lean.stack is not None
    enc = smollm2.tokenizer(texts, return_tensors="pt", padding=True)
    whole_cache, stepwise_cache = DynamicCache(), DynamicCache()
    whole = _steps(lean, enc.input_ids, enc.attention_mask, 5, whole_cache)
    monkeypatch.setattr(lean, "stack", None)  # the layer-by-layer path, SDPA for attention
    stepwise = _steps(lean, enc.input_ids, enc.attention_mask, 5, stepwise_cache)
    for ours, theirs in zip(whole, stepwise, strict=True):  # summation order, then the 16-bit inputs (see above)
        torch.testing.assert_close(ours, theirs, atol=2e-2, rtol=1e-3)
        assert torch.equal(ours.argmax(-1), theirs.argmax(-1))
    assert whole_cache.get_seq_length() == stepwise_cache.get_seq_length() == enc.input_ids.shape[1] + 5
    for a, b in zip(whole_cache.layers, stepwise_cache.layers, strict=True):
        torch.testing.assert_close(a.keys, b.keys, atol=1e-2, rtol=1e-2)
        torch.testing.assert_close(a.values, b.values, atol=1e-2, rtol=1e-2)
