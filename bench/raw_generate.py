"""Raw `model.generate` on one padded batch: the ceiling the served engine is compared with."""

from __future__ import annotations

import time
from typing import Any

import torch

QUESTIONS = [
    "What is the capital of France?",
    "Explain what a Kubernetes pod is.",
    "Write a short poem about autumn.",
    "Give me three tips for writing clean Python.",
    "Why is the sky blue?",
    "Summarise the plot of Romeo and Juliet.",
    "What does HTTP status 429 mean?",
    "How do I boil an egg?",
]


def messages_for(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]


def raw_generate(loaded: Any, batch: int, max_tokens: int) -> dict[str, float]:
    """One padded batch through model.generate, exactly max_tokens new tokens per row (greedy)."""
    tok = loaded.tokenizer
    texts = [tok.apply_chat_template(messages_for(i), add_generation_prompt=True, tokenize=False) for i in range(batch)]
    inputs = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(loaded.device)
    with torch.inference_mode():
        loaded.model.generate(**inputs, do_sample=False, max_new_tokens=2, pad_token_id=tok.pad_token_id)  # warm-up
        started = time.perf_counter()
        out = loaded.model.generate(
            **inputs,
            do_sample=False,
            min_new_tokens=max_tokens,
            max_new_tokens=max_tokens,
            pad_token_id=tok.pad_token_id,
        )
        elapsed = time.perf_counter() - started
    generated = (out.shape[1] - inputs["input_ids"].shape[1]) * batch
    return {"tokens": generated, "seconds": elapsed, "tok_s": generated / elapsed}
