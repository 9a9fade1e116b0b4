"""Model settings: which model the chat pods load, how it is quantized, and the limits of one reply and one batch."""

from __future__ import annotations

import re
from dataclasses import dataclass

from infra.settings.values import Raw, boolean, choice, integer, text

# What the app takes for a hub id when MODEL_PATH is no local file or directory (app/inference/loader.py's _HUB_ID;
# a test holds the two to one pattern). Local models are absolute paths or embedded:<name>.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


@dataclass(frozen=True)
class ModelSettings:
    path: str  # MODEL_PATH
    quantization: str
    dtype: str
    prefix_cache_tokens: int
    max_tokens: int
    max_batch_size: int
    hub_auth: bool  # a model-hub token (the secret hubToken) is sealed into the key file
    download_timeout_seconds: int  # how long the download Job may run

    @property
    def from_hub(self) -> bool:
        """The model is a hub id: a Job fetches it into the data volume once, and the chat pods never go online."""
        return bool(HUB_ID.match(self.path)) and not self.path.lower().endswith(".gguf")


def parse_model(raw: Raw) -> ModelSettings:
    return ModelSettings(
        path=text(raw, "modelPath", required=True),
        quantization=choice(raw, "quantization"),
        dtype=choice(raw, "dtype"),
        prefix_cache_tokens=integer(raw, "prefixCacheTokens"),
        max_tokens=integer(raw, "maxTokens"),
        max_batch_size=integer(raw, "maxBatchSize"),
        hub_auth=boolean(raw, "modelHubAuth"),
        download_timeout_seconds=integer(raw, "modelDownloadTimeoutSeconds", 60, 86_400),
    )
