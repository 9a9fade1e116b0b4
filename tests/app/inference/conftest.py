"""The tiny random Llama the engine tests share (built once per session: it is the same model every time)."""

from __future__ import annotations

import pytest
from transformers import LlamaForCausalLM

from tests.app.inference.toy import make_tiny


@pytest.fixture(scope="session")
def tiny() -> LlamaForCausalLM:
    return make_tiny()
