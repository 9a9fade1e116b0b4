"""ChatRunner.prepare with the embedded model's tokenizer: limits that fit real clients, the model's sampling
defaults, the message shapes agent clients send, and the requests it refuses with a reason."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from app.api.errors import ApiError
from app.api.schemas import ChatMessage, GenerationFields
from app.api.serving import ChatRunner, OutputRequest
from app.inference.constraints import GrammarConstraint, Grammars
from app.inference.loader import SamplingDefaults
from app.observability.metrics import build_metrics
from app.settings import Settings

WINDOW = 400
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@dataclass
class Caller:
    key_id: str = "k1"


@pytest.fixture(scope="module")
def runner(embedded: Any) -> Iterator[ChatRunner]:
    tokenizer = embedded.tokenizer
    runner = ChatRunner(
        settings=Settings(max_tokens=128),
        metrics=build_metrics(),
        engine=None,  # type: ignore[arg-type]
        tokenizer=tokenizer,
        model_name="clawbot",
        model_identity="test-model",
        context_window=WINDOW,
        storage=None,
        defaults=SamplingDefaults(temperature=0.0, top_p=0.9, repetition_penalty=1.1),
        grammars=Grammars(tokenizer, embedded.model.config.vocab_size, {tokenizer.eos_token_id}),
    )
    yield runner
    runner.close()


# An assistant turn that called get_weather, and the tool's answer.
WEATHER_CALL_AND_RESULT: tuple[dict[str, Any], ...] = (
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
)


def messages(*items: dict[str, Any]) -> list[ChatMessage]:
    return [ChatMessage.model_validate(m) for m in items]


ASK = messages({"role": "user", "content": "What is the capital of France?"})


def prepare(
    runner: ChatRunner,
    msgs: list[ChatMessage] = ASK,
    max_tokens: int | None = None,
    gen: GenerationFields | None = None,
    **output: Any,
) -> Any:
    return asyncio.run(
        runner.prepare(
            "/v1/chat/completions",
            Caller(),
            msgs,
            gen or GenerationFields(),  # type: ignore[arg-type]
            max_tokens=max_tokens,
            output=OutputRequest(**output),
        )
    )


def refused(fn: Any, code: str) -> str:
    with pytest.raises(ApiError) as err:
        fn()
    assert err.value.status == 400 and err.value.code == code, err.value.message
    return err.value.message


def test_output_caps_are_clamped_not_refused(runner: ChatRunner) -> None:
    assert prepare(runner).max_tokens == 128  # none asked: MAX_TOKENS
    assert prepare(runner, max_tokens=8192).max_tokens == 128  # what OpenClaw asks for by default
    assert prepare(runner, max_tokens=20).max_tokens == 20
    long = messages({"role": "user", "content": "Paris. " * 160})
    job = prepare(runner, long, max_tokens=128)
    assert job.max_tokens == WINDOW - len(job.prompt_ids) < 128  # the room the prompt leaves


def test_only_a_prompt_that_fills_the_window_is_refused(runner: ChatRunner) -> None:
    message = refused(
        lambda: prepare(runner, messages({"role": "user", "content": "Paris. " * 400})), "context_length_exceeded"
    )
    assert f"context window is {WINDOW} tokens" in message


def test_left_out_sampling_parameters_come_from_the_model(runner: ChatRunner) -> None:
    params = prepare(runner).params
    assert (params.temperature, params.top_p, params.repetition_penalty) == (0.0, 0.9, 1.1)
    params = prepare(runner, gen=GenerationFields(temperature=0.7, repetition_penalty=1.0)).params
    assert (params.temperature, params.top_p, params.repetition_penalty) == (0.7, 0.9, 1.0)
    # A grammar-bound output repeats quotes and braces by nature: no default penalty there.
    assert prepare(runner, json_schema={"type": "object"}).params.repetition_penalty == 1.0


def test_agent_message_shapes_are_accepted(runner: ChatRunner) -> None:
    job = prepare(
        runner,
        messages(
            {"role": "developer", "content": "You are terse."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Weather "}, {"type": "input_text", "text": "in Paris?"}],
            },
            *WEATHER_CALL_AND_RESULT,
        ),
        tools=[WEATHER],
    )
    assert [m["role"] for m in job.messages] == ["system", "user", "assistant", "tool"]
    assert job.messages[1]["content"] == "Weather in Paris?"
    prompt = runner.jobs.renderer._tokenizer.decode(job.prompt_ids)
    assert "You are terse.\n\n# Tools" in prompt and "<tool_response>\n18C\n</tool_response>" in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt


def test_image_parts_are_refused_naming_the_text_only_model(runner: ChatRunner) -> None:
    image = messages(
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
            ],
        }
    )
    message = refused(lambda: prepare(runner, image), "unsupported_content")
    assert "messages[0].content[1]" in message and "'clawbot' is text-only" in message


def test_forced_calls_and_schemas_get_a_grammar(runner: ChatRunner) -> None:
    named = prepare(runner, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert isinstance(named.params.constraint, GrammarConstraint) and named.plan.forced == "get_weather"
    assert isinstance(prepare(runner, tools=[WEATHER], tool_choice="required").params.constraint, GrammarConstraint)
    assert prepare(runner, tools=[WEATHER]).params.constraint is None  # auto: the model decides
    assert prepare(runner, tools=[WEATHER]).cache_key is None


def test_bad_tool_choice_and_schemas_say_why(runner: ChatRunner) -> None:
    message = refused(
        lambda: prepare(runner, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "x"}}),
        "invalid_tool_choice",
    )
    assert "'x', which is not in tools (get_weather)" in message
    message = refused(lambda: prepare(runner, json_schema={"type": "objectx"}), "invalid_schema")
    assert message == "the response format's JSON schema cannot be enforced: Unsupported type \"objectx\""
    message = refused(
        lambda: prepare(runner, json_schema={"type": "string", "pattern": "(a{1,100}){1,100}"}), "schema_too_complex"
    )
    assert message.startswith("the response format's JSON schema is refused: the pattern at #/pattern repeats 10000")
    weird = {**WEATHER, "function": {**WEATHER["function"], "parameters": {"not": {}}}}
    message = refused(lambda: prepare(runner, tools=[weird], tool_choice="required"), "unsupported_schema")
    assert (
        "the parameters schema of the tools in tool_choice is refused: 'not' at #/items/anyOf/0/properties/arguments"
        in message
    )


# The parts of Qwen 2.5's chat template that handle tools, enough to show what a template that renders tools receives.
TOOL_TEMPLATE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>{% endif %}"
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function.name }} {{ c.function.arguments | tojson }}</tool_call>"
    "{% endfor %}{% endfor %}<|assistant|>"
)


def test_a_template_that_renders_tools_gets_them(embedded: Any) -> None:
    tokenizer = copy.deepcopy(embedded.tokenizer)
    tokenizer.chat_template = TOOL_TEMPLATE
    native = ChatRunner(
        settings=Settings(),
        metrics=build_metrics(),
        engine=None,  # type: ignore[arg-type]
        tokenizer=tokenizer,
        model_name="clawbot",
        model_identity="test-model",
        context_window=WINDOW,
        storage=None,
    )
    assert native.jobs.native_tools and native.jobs.parser.name == "hermes"
    job = prepare(
        native,
        messages(
            {"role": "user", "content": "Weather in Paris?"},
            *WEATHER_CALL_AND_RESULT,
        ),
        tools=[WEATHER],
    )
    prompt = tokenizer.decode(job.prompt_ids)
    assert prompt.startswith('<tools>{"type": "function", "function": {"name": "get_weather"')
    assert '<tool_call>get_weather {"city": "Paris"}</tool_call><|tool|>18C<|assistant|>' in prompt
