"""Chat messages to prompt token ids, off the event loop: template rendering and tokenization on a small thread pool.

A 1 MB prompt takes the tokenizer a good fraction of a second; run on the event loop it
would stall every other request, the probes included. Each pool thread has its own copy of
the tokenizer, so no two threads ever share the Rust tokenizer's state (nor share it with
the engine's worker, which decodes with the original).
"""

from __future__ import annotations

import asyncio
import copy
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# Two threads: one huge prompt does not hold up every small one behind it, and a burst of huge prompts
# cannot take every core from the engine.
RENDER_THREADS = 2


class PromptRenderer:
    def __init__(self, tokenizer: Any, threads: int = RENDER_THREADS) -> None:
        # Copied now, so the threads copy from a tokenizer the engine's worker never touches.
        self._tokenizer = copy.deepcopy(tokenizer)
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="clawbot-render")

    def render_now(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        """Render and tokenize in the calling thread (the pool's threads run this); `tools` go to the template."""
        tokenizer = getattr(self._local, "tokenizer", None)
        if tokenizer is None:
            tokenizer = self._local.tokenizer = copy.deepcopy(self._tokenizer)
        kwargs = {"tools": tools} if tools else {}
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **kwargs)
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return list(ids)

    async def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.render_now, messages, tools)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
