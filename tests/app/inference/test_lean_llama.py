"""The lean llama forward computes what transformers' own forward computes over the same quantized weights:
prefill of a left-padded batch, then decode steps, with the cache the engine uses (a DynamicCache)."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from app.inference.lean_llama import LeanLlama, can_install
from app.inference.loader import LoadedModel


def _steps(forward: object, ids: torch.Tensor, mask: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """Prefill, then `steps` greedy decode steps; the logits of each call."""
    cache = DynamicCache()
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
    for ours, theirs in zip(lean, original, strict=True):
        torch.testing.assert_close(ours.float(), theirs.float(), atol=2e-3, rtol=1e-3)
        assert torch.equal(ours.argmax(-1), theirs.argmax(-1))
