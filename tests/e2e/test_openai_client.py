"""The official `openai` Python client drives /v1/chat/completions, streaming and not."""
from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from tests.e2e.server import Server

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture()
def client(server: Server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=120)


def test_client_lists_and_completes(client: OpenAI) -> None:
    model = client.models.list().data[0].id
    done = client.chat.completions.create(model=model, messages=FRANCE, max_tokens=24, temperature=0)  # type: ignore[arg-type]
    assert "Paris" in (done.choices[0].message.content or "")
    assert done.usage is not None and done.usage.completion_tokens > 0


def test_client_streams_with_usage(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="clawbot", messages=FRANCE, max_tokens=24, temperature=0,  # type: ignore[arg-type]
        stream=True, stream_options={"include_usage": True},
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert "Paris" in text
    assert usage is not None and usage.prompt_tokens > 0


def test_client_sees_bad_key_as_authentication_error(server: Server) -> None:
    bad = OpenAI(base_url=server.url + "/v1", api_key="ck-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="clawbot", messages=FRANCE)  # type: ignore[arg-type]
