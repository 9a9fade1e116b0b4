"""tool_choice into a plan, and a streamed generation into text and tool-call pieces (what clients reassemble)."""

from __future__ import annotations

import json

import pytest

from app.api.tools import Delta, ToolChoiceError, ToolPlan
from app.api.tools.hermes import HermesParser
from app.api.tools.render import for_native_template, for_plain_template

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}


def plan(choice: object = None, tools: list | None = None, parallel: bool | None = None) -> ToolPlan:
    return ToolPlan.of([WEATHER, TIME] if tools is None else tools, choice, parallel, HermesParser())  # type: ignore[arg-type]


def stream(p: ToolPlan, pieces: list[str]) -> tuple[list[Delta], object]:
    shaper = p.shaper()
    out = [d for piece in pieces for d in shaper.feed(piece)]
    tail, parsed = shaper.finish()
    return out + tail, parsed


def reassemble(deltas: list[Delta]) -> tuple[str, dict[int, dict[str, str]]]:
    """What the openai client does with delta.content and delta.tool_calls."""
    text, calls = "", {}
    for d in deltas:
        if d.call_index is None:
            text += d.text
            continue
        call = calls.setdefault(d.call_index, {"id": "", "name": "", "arguments": ""})
        if d.call is not None:
            call.update(id=d.call.id, name=d.call.name)
        call["arguments"] += d.arguments
    return text, calls


def test_choices_and_their_errors() -> None:
    assert plan().mode == "auto" and plan(tools=[]).mode == "none"
    assert plan("none").tools == ()  # nothing to call: the tools are not shown to the model
    assert plan({"type": "function", "function": {"name": "get_time"}}).forced == "get_time"
    with pytest.raises(ToolChoiceError, match="'get_date', which is not in tools"):
        plan({"type": "function", "function": {"name": "get_date"}})
    with pytest.raises(ToolChoiceError, match="needs at least one function"):
        plan("required", tools=[])


def test_grammar_schemas_for_forced_calls() -> None:
    assert plan({"type": "function", "function": {"name": "get_weather"}}).schema() == WEATHER["function"]["parameters"]
    assert plan({"type": "function", "function": {"name": "get_time"}}).schema() == {"type": "object", "properties": {}}
    required = plan("required", parallel=False).schema()
    assert required is not None and required["maxItems"] == 1 and required["minItems"] == 1
    assert [o["properties"]["name"] for o in required["items"]["anyOf"]] == [
        {"const": "get_weather"},
        {"const": "get_time"},
    ]
    assert plan("auto").schema() is None


def test_named_call_streams_its_arguments_as_they_come() -> None:
    deltas, parsed = stream(
        plan({"type": "function", "function": {"name": "get_weather"}}), ['{"city', '": "Par', 'is"}']
    )
    assert deltas[0].call is not None and deltas[0].call.name == "get_weather" and deltas[0].arguments == ""
    assert [d.arguments for d in deltas[1:]] == ['{"city', '": "Par', 'is"}']
    text, calls = reassemble(deltas)
    assert text == "" and json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    assert parsed.calls[0].id == calls[0]["id"] and parsed.content is None  # type: ignore[attr-defined]


def test_required_calls_come_whole_at_the_end() -> None:
    p = plan("required")
    deltas, parsed = stream(
        p, ['[{"name": "get_time", ', '"arguments": {}}, ', '{"name": "get_weather", "arguments": {"city": "Oslo"}}]']
    )
    text, calls = reassemble(deltas)
    assert text == "" and [c["name"] for c in calls.values()] == ["get_time", "get_weather"]
    assert json.loads(calls[1]["arguments"]) == {"city": "Oslo"}
    assert p.parse('[{"name": "get_ti').calls == ()  # cut off by the length cap: left as content


def test_auto_streams_text_and_holds_back_the_call() -> None:
    pieces = ["Let me", " look. <tool", '_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>']
    deltas, parsed = stream(plan("auto"), pieces)
    text, calls = reassemble(deltas)
    assert text == "Let me look. "
    assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["arguments"]) == {"city": "Rome"}
    assert parsed.content == "Let me look. " and len(parsed.calls) == 1  # type: ignore[attr-defined]
    plain, parsed_plain = stream(plan("auto"), ["Rome is ", "sunny."])
    assert reassemble(plain) == ("Rome is sunny.", {}) and parsed_plain.calls == ()  # type: ignore[attr-defined]


def test_auto_without_parallel_calls_keeps_the_first() -> None:
    two = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>' * 2
    assert len(plan("auto").parse(two).calls) == 2
    assert len(plan("auto", parallel=False).parse(two).calls) == 1


FOLLOW_UP = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
    {"role": "tool", "tool_call_id": "call_2", "content": "14:05"},
]


def test_plain_templates_get_the_family_format_in_text() -> None:
    out = for_plain_template(FOLLOW_UP, [WEATHER], HermesParser())
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[0]["content"].startswith("Be brief.\n\n# Tools") and '"name": "get_weather"' in out[0]["content"]
    assert out[2]["content"] == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    )
    assert (
        out[3]["content"] == "<tool_response>\n18C, sunny\n</tool_response>\n<tool_response>\n14:05\n</tool_response>"
    )
    assert all(set(m) == {"role", "content"} for m in out)


def test_native_templates_get_arguments_as_objects() -> None:
    out = for_native_template(FOLLOW_UP)
    assert out[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert out[3] == FOLLOW_UP[3]
