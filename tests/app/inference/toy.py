"""A toy world for engine tests: a byte-level tokenizer, a tiny random Llama, a spying model wrapper, a reference decoder."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from app.inference.engine import Completion, Engine

T = TypeVar("T")
PAD, EOS, FIRST_BYTE = 0, 1, 2
VOCAB = FIRST_BYTE + 256


class ByteTokenizer:
    """Token i >= 2 is the byte i-2; 0 is padding, 1 is EOS. Decoding is UTF-8 with replacement, like real BPE."""

    pad_token_id = PAD
    eos_token_id = EOS

    def encode(self, text: str) -> list[int]:
        return [b + FIRST_BYTE for b in text.encode()]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        raw = bytes(i - FIRST_BYTE for i in ids if i >= FIRST_BYTE)
        return raw.decode("utf-8", errors="replace")


def make_tiny() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=None,
        # Peaky logits: with the default 0.02 init every logit is a near-tie and greedy decoding means little.
        initializer_range=0.3,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = PAD
    return model


tok = ByteTokenizer()


def run(make: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(make(), timeout=120))


def engine_for(model: Any, tokenizer: Any = tok, **kwargs: Any) -> Engine:
    kwargs.setdefault("batch_wait_ms", 0)
    kwargs.setdefault("context_window", 512)
    return Engine(model, tokenizer, device="cpu", **kwargs)


def reference(model: Any, prompt: list[int], n: int) -> list[int]:
    """model.generate on the prompt alone (no padding), greedy, exactly n new tokens."""
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=n,
            min_new_tokens=n,
            pad_token_id=PAD,
        )
    return out[0, len(prompt) :].tolist()


class Spy:
    """Wraps a model: records every forward pass, optionally fails some, optionally forces the argmax token per row.

    `script(row_prompt_len, step) -> token` picks the token a row emits at generation step `step`.
    `fail(rows, columns) -> exception or None`: an exception to raise instead of running that pass.
    Each pass is recorded as (rows, input columns, attention-mask width) in `passes`.
    With a `gate`, every pass waits for it to open (`entered` is set once a pass is waiting or running).
    """

    def __init__(
        self,
        model: Any,
        script: Callable[[int], int] | None = None,
        prompt_len: int | None = None,
        delay_s: float = 0.0,
        fail: Callable[[int, int], BaseException | None] | None = None,
        gate: threading.Event | None = None,
    ) -> None:
        self.model = model
        self.delay_s = delay_s
        self.generation_config = model.generation_config
        self.batch_sizes: list[int] = []
        self.passes: list[tuple[int, int, int]] = []
        self.failures = 0
        self.script = script
        self.prompt_len = prompt_len
        self.fail = fail
        self.gate = gate
        self.entered = threading.Event()

    def __call__(self, **kwargs: Any) -> Any:
        rows, columns = (int(n) for n in kwargs["input_ids"].shape)
        error = self.fail(rows, columns) if self.fail is not None else None
        if error is not None:
            self.failures += 1
            raise error
        self.batch_sizes.append(rows)
        self.passes.append((rows, columns, int(kwargs["attention_mask"].shape[1])))
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(120)
        if self.delay_s:
            time.sleep(self.delay_s)
        out = self.model(**kwargs)
        if self.script is not None:
            assert self.prompt_len is not None
            steps = kwargs["position_ids"][:, -1] - (self.prompt_len - 1)
            forced = torch.full_like(out.logits[:, -1:, :], -1e9)
            for row, step in enumerate(steps.tolist()):
                forced[row, 0, self.script(step)] = 0.0
            out.logits = forced
        return out


def oom_above(rows: int, columns: int | None = None) -> Callable[[int, int], BaseException | None]:
    """A `Spy.fail` rule: CUDA's out-of-memory error for a pass over more than `rows` rows (of `columns` inputs)."""

    def rule(n_rows: int, n_columns: int) -> BaseException | None:
        if n_rows > rows and (columns is None or n_columns == columns):
            return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
        return None

    return rule


def text_script(text: str, then: int = EOS) -> Callable[[int], int]:
    ids = tok.encode(text)
    return lambda step: ids[step] if step < len(ids) else then


async def collect(handle: Any) -> tuple[list[str], Completion]:
    deltas = [d async for d in handle]
    return deltas, await handle.result()
