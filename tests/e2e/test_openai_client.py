"""The official `openai` Python client against a real server with the embedded model: chat (streaming and not),
tool calls, structured output, the Responses API, clamped limits, the model's defaults and errors in a stream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from openai import OpenAI

from tests.e2e.server import Server, running_server
from tests.e2e.test_disconnect import metric as metric_value

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": WEATHER_PARAMETERS},
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "description": "Current time", "parameters": {"type": "object", "properties": {}}},
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
CITY = {
    "type": "object",
    "required": ["city", "country"],
    "properties": {"city": {"type": "string", "maxLength": 40}, "country": {"type": "string", "maxLength": 40}},
}


@pytest.fixture()
def client(server: Server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=300)


def test_client_lists_and_completes(client: OpenAI) -> None:
    model = client.models.list().data[0]
    assert model.model_extra and model.model_extra["max_model_len"] == 8192  # clients size prompts by it
    done = client.chat.completions.create(model=model.id, messages=FRANCE, max_tokens=24, temperature=0)  # type: ignore[arg-type]
    assert "Paris" in (done.choices[0].message.content or "")
    assert done.usage is not None and done.usage.completion_tokens > 0


def test_a_request_with_no_sampling_parameters_answers_correctly(client: OpenAI) -> None:
    # The README's first request: no temperature, no max_tokens. The embedded model's defaults must give Paris.
    done = client.chat.completions.with_raw_response.create(model="clawbot", messages=FRANCE)  # type: ignore[arg-type]
    assert "Paris" in (done.parse().choices[0].message.content or "")
    assert done.headers["x-max-completion-tokens"] == "256"


def test_client_streams_with_usage(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="clawbot",
        messages=FRANCE,
        max_tokens=24,
        temperature=0,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert "Paris" in text
    assert usage is not None and usage.prompt_tokens > 0


def test_an_output_cap_above_the_server_cap_is_clamped(client: OpenAI) -> None:
    # OpenClaw asks for max_completion_tokens 8192 when nothing is configured; the server cap here is 256.
    raw = client.chat.completions.with_raw_response.create(
        model="clawbot",
        messages=FRANCE,
        max_completion_tokens=8192,
        temperature=0,  # type: ignore[arg-type]
    )
    done = raw.parse()
    assert raw.headers["x-max-completion-tokens"] == "256"
    assert done.usage is not None and (done.usage.model_extra or {})["max_completion_tokens"] == 256
    assert "Paris" in (done.choices[0].message.content or "")


def test_a_named_tool_call_has_schema_valid_arguments(client: OpenAI) -> None:
    done = client.chat.completions.create(
        model="clawbot",
        messages=ASK_WEATHER,
        tools=[WEATHER, TIME],
        max_tokens=60,  # type: ignore[list-item,arg-type]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")  # type: ignore[union-attr]
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMETERS)  # type: ignore[union-attr]


def test_a_required_tool_call_streams_as_delta_tool_calls(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="clawbot",
        messages=ASK_WEATHER,
        tools=[WEATHER],
        tool_choice="required",  # type: ignore[list-item,arg-type]
        parallel_tool_calls=False,
        max_completion_tokens=60,
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for part in choice.delta.tool_calls or ():
            call = calls.setdefault(part.index, {"name": "", "arguments": ""})
            call["name"] += (part.function.name or "") if part.function else ""
            call["arguments"] += (part.function.arguments or "") if part.function else ""
    assert finish == "tool_calls" and list(calls) == [0]
    assert calls[0]["name"] == "get_weather"
    jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER_PARAMETERS)


def agent_turn() -> list[dict[str, Any]]:
    """A follow-up as agent gateways send it: a developer prompt, text parts, an assistant turn that only called
    a tool (content null), and the tool's result."""
    return [
        {"role": "developer", "content": "You are a weather assistant."},
        {"role": "user", "content": [{"type": "text", "text": "What is the weather in Paris?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees celsius and sunny"},
    ]


def test_auto_tools_accept_the_follow_up_shapes(client: OpenAI) -> None:
    done = client.chat.completions.create(
        model="clawbot",
        messages=agent_turn(),
        tools=[WEATHER],
        tool_choice="auto",
        max_tokens=16,  # type: ignore[arg-type,list-item]
    )
    choice = done.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert choice.message.content or choice.message.tool_calls
    stream = client.chat.completions.create(
        model="clawbot",
        messages=agent_turn(),
        tools=[WEATHER],
        max_tokens=16,
        stream=True,  # type: ignore[arg-type,list-item]
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 100
    assert any(c.choices and (c.choices[0].delta.content or c.choices[0].delta.tool_calls) for c in chunks)


def test_structured_output_follows_the_json_schema(client: OpenAI) -> None:
    done = client.chat.completions.create(
        model="clawbot",
        messages=[{"role": "user", "content": "Name a city and its country."}],
        max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}},
    )
    assert done.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(done.choices[0].message.content or ""), CITY)
    any_object = client.chat.completions.create(
        model="clawbot",
        messages=[{"role": "user", "content": "Describe Paris in JSON."}],
        max_tokens=40,
        response_format={"type": "json_object"},
        temperature=0,
    )
    if any_object.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(any_object.choices[0].message.content or ""), dict)
    else:  # the cap cut it short: still the start of an object
        assert (any_object.choices[0].message.content or "").startswith("{")


def test_images_are_refused_as_text_only(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="clawbot",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in this picture?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    ],
                }
            ],
        )
    assert "'clawbot' is text-only" in err.value.message


def test_responses_create(client: OpenAI) -> None:
    raw = client.responses.with_raw_response.create(
        model="clawbot", input="What is the capital of France?", max_output_tokens=24, store=False
    )
    response = raw.parse()
    # The default 4-bit model (gguf:q4_1) may still be talking when the 24-token cap comes: then it is incomplete for
    # that reason, and the answer is there all the same.
    assert response.status == "completed" or (
        response.status == "incomplete"
        and response.incomplete_details is not None
        and response.incomplete_details.reason == "max_output_tokens"
    )
    assert "Paris" in response.output_text
    assert response.usage is not None and response.usage.output_tokens > 0 and response.store is False
    assert raw.headers["x-max-completion-tokens"] == "24"


def test_responses_stream_with_parts_and_instructions(client: OpenAI) -> None:
    stream = client.responses.create(
        model="clawbot",
        instructions="You are a helpful assistant.",
        max_output_tokens=24,
        store=False,
        stream=True,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "What is the capital of France?"}]}],
    )
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert (
        kinds[-4:]
        == [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
        or kinds[-1] == "response.incomplete"
    )
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == text and text


def test_responses_function_tools(client: OpenAI) -> None:
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": WEATHER_PARAMETERS,
        "strict": True,
    }
    response = client.responses.create(
        model="clawbot",
        input="What is the weather in Paris?",
        tools=[tool],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=60,
    )
    (call,) = [item for item in response.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), WEATHER_PARAMETERS)
    # The result goes back as a function_call_output item.
    follow = client.responses.create(
        model="clawbot",
        tools=[tool],
        max_output_tokens=30,
        input=[  # type: ignore[list-item]
            {"role": "user", "content": "What is the weather in Paris?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees and sunny"},
        ],
    )
    assert follow.status in ("completed", "incomplete") and follow.output


def test_responses_refuse_what_is_not_served(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="never stored"):
        client.responses.create(model="clawbot", input="hi", previous_response_id="resp_123")
    with pytest.raises(openai.BadRequestError, match="only function tools"):
        client.responses.create(model="clawbot", input="hi", tools=[{"type": "web_search"}])  # type: ignore[list-item]


def test_client_sees_bad_key_as_authentication_error(server: Server) -> None:
    bad = OpenAI(base_url=server.url + "/v1", api_key="ck-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="clawbot", messages=FRANCE)  # type: ignore[arg-type]


# About 7,200 tokens: read 256 at a time, this prompt takes longer than a 1 s deadline before its first token.
LONG_PROMPT = "Tell me a long story about a dragon. " * 800


@pytest.fixture(scope="module")
def hasty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose generations time out after one second, so that a long prompt fails after its 200 went out."""
    with running_server(
        Path(tmp_path_factory.mktemp("hasty")), GENERATION_TIMEOUT_SECONDS="1", PREFILL_CHUNK_TOKENS="256"
    ) as srv:
        yield srv


def test_an_error_mid_stream_is_raised_by_the_client_and_counted(hasty: Server) -> None:
    """The deadline passes before the first token, after the stream's 200 went out: the client sees an error."""
    client = OpenAI(base_url=hasty.url + "/v1", api_key=hasty.api_key, max_retries=0, timeout=120)
    stream = client.chat.completions.create(
        model="clawbot",
        messages=[{"role": "user", "content": LONG_PROMPT}],
        max_tokens=256,
        stream=True,
    )
    with pytest.raises(
        openai.APIError, match=r"generation did not start within GENERATION_TIMEOUT_SECONDS \(1 seconds\)"
    ):
        for _ in stream:
            pass
    events = list(client.responses.create(model="clawbot", input=LONG_PROMPT, max_output_tokens=256, stream=True))
    assert [e.type for e in events][-2:] == ["error", "response.failed"]
    assert events[-2].code == "generation_timeout"  # type: ignore[union-attr]
    metrics = hasty.metrics()
    assert 'clawbot_requests_total{route="/v1/chat/completions",status="504"} 1.0' in metrics
    assert 'clawbot_requests_total{route="/v1/responses",status="504"} 1.0' in metrics
    logged = [json.loads(line) for line in hasty.log().splitlines() if line.startswith("{")]
    chats = [d for d in logged if d.get("logger") == "clawbot.request" and d.get("route") == "/v1/chat/completions"]
    assert [d["status"] for d in chats] == [504]


DEADLINE_S = 20  # far longer than a first token takes on a busy machine, far shorter than 8,000 tokens take
LONG_ANSWER = 8000


@pytest.fixture(scope="module")
def patient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(
        Path(tmp_path_factory.mktemp("patient")), GENERATION_TIMEOUT_SECONDS=str(DEADLINE_S), MAX_TOKENS="8192"
    ) as srv:
        yield srv


def test_an_answer_the_deadline_cuts_short_is_returned_with_finish_reason_length(patient: Server) -> None:
    """8,000 tokens cannot be generated within the deadline: what was generated comes back, in every API (the four
    requests run side by side, so the test waits for one deadline)."""
    ask = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]
    long = {"max_tokens": LONG_ANSWER, "ignore_eos": True}
    client = OpenAI(base_url=patient.url + "/v1", api_key=patient.api_key, max_retries=0, timeout=120)
    with patient.client() as c:
        token = c.post("/api/auth", json={"api_key": patient.api_key}).json()["token"]

    def seed() -> Any:
        with patient.client() as c:
            return c.post(
                "/api/chat",
                json={"messages": ask, "max_tokens": LONG_ANSWER},
                headers={"Authorization": f"Bearer {token}"},
            )

    with ThreadPoolExecutor(4) as pool:
        plain = pool.submit(
            lambda: client.chat.completions.with_raw_response.create(model="clawbot", messages=ask, extra_body=long)
        )  # type: ignore[arg-type]
        streamed = pool.submit(
            lambda: list(
                client.chat.completions.create(
                    model="clawbot", messages=ask, stream=True, stream_options={"include_usage": True}, extra_body=long
                )
            )
        )  # type: ignore[arg-type]
        seeded = pool.submit(seed)
        responded = pool.submit(
            lambda: client.responses.with_raw_response.create(
                model="clawbot", input=ask[0]["content"], max_output_tokens=LONG_ANSWER
            )
        )

    raw = plain.result()
    done = raw.parse()
    assert done.choices[0].finish_reason == "length" and done.choices[0].message.content
    assert raw.headers["x-generation-deadline"] == str(DEADLINE_S)
    assert raw.headers["x-max-completion-tokens"] == str(LONG_ANSWER)
    assert done.usage is not None and 0 < done.usage.completion_tokens < LONG_ANSWER

    chunks = streamed.result()
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and 0 < chunks[-1].usage.completion_tokens < LONG_ANSWER

    # The seed API and the Responses API take no ignore_eos: the model may stop on its own before the deadline.
    answer = seeded.result()
    assert answer.status_code == 200, answer.text
    assert (answer.json()["finish_reason"] == "length") == ("x-generation-deadline" in answer.headers)
    raw_response = responded.result()
    response = raw_response.parse()
    assert response.status in ("completed", "incomplete") and response.output_text
    assert (response.status == "incomplete") == ("x-generation-deadline" in raw_response.headers)
    if response.status == "incomplete":  # as an answer max_output_tokens cut short
        assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and 0 < response.usage.output_tokens < LONG_ANSWER
    assert metric_value(patient.metrics(), "clawbot_generation_timeouts_total") >= 2
