"""What the inference tests share, built once per session: the tiny random Llama the engine tests use, and the
synthetic GGUF tensors of every block type the quantized-linear tests use (tests/app/inference/gguf_tensors.py), and
the embedded model loaded from its GGUF as a user would (MODEL_PATH=file.gguf, QUANTIZATION=auto)."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from transformers import LlamaForCausalLM

from app.inference.loader import LoadedModel, embedded_gguf_path, load_model
from tests.app.inference.gguf_tensors import GGUF_DATA_DIR, read_tensors, write_gguf
from tests.app.inference.toy import make_tiny


@pytest.fixture(scope="session")
def tensors(tmp_path_factory: pytest.TempPathFactory) -> dict[Q, np.ndarray]:
    """GGUF type -> that type's raw [ROWS, bytes per row] blocks, memory-mapped from a real GGUF file."""
    return read_tensors(write_gguf(tmp_path_factory.mktemp("gguf") / "blocks.gguf"))


@pytest.fixture(scope="session")
def tiny() -> LlamaForCausalLM:
    return make_tiny()


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    return load_model(str(embedded_gguf_path()), GGUF_DATA_DIR, device="cpu", progress=False)
