"""Model settings: which model the chat pods load, how it is quantized, and the limits of one reply and one batch."""
from __future__ import annotations

from dataclasses import dataclass

from app.settings import DTYPES, QUANTIZATIONS
from infra.settings.values import Raw, boolean, choice, integer, text


@dataclass(frozen=True)
class ModelSettings:
    path: str  # MODEL_PATH
    quantization: str
    dtype: str
    prefix_cache_tokens: int
    max_tokens: int
    max_batch_size: int
    hub_auth: bool  # a model-hub token (the secret hubToken) is sealed into the key file


def parse_model(raw: Raw) -> ModelSettings:
    return ModelSettings(
        path=text(raw, "modelPath", required=True),
        quantization=choice(raw, "quantization", QUANTIZATIONS),
        dtype=choice(raw, "dtype", DTYPES),
        prefix_cache_tokens=integer(raw, "prefixCacheTokens", 0, 100_000_000),
        max_tokens=integer(raw, "maxTokens", 1, 8192),
        max_batch_size=integer(raw, "maxBatchSize", 1, 256),
        hub_auth=boolean(raw, "modelHubAuth"),
    )
