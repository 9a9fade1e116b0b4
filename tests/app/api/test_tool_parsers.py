"""Tool-call parsers on real outputs of their model families, and how the parser is chosen.

The model outputs below are taken verbatim from vLLM's parser tests (Apache-2.0), which hold outputs of the
families each format belongs to:
- Hermes / Qwen: vllm-project/vllm tests/tool_parsers/test_hermes_tool_parser.py
  (commit df6d0216aa6fed0b310cbefb5b79f1d0ec5993dc; Qwen3 and Hermes 2 Pro outputs)
- Llama 3.x JSON: vllm-project/vllm tests/tool_parsers/test_llama3_json_tool_parser.py
  (commit e761a18556be6e7e80a81c8bc4b443ac52b2ba69; Llama-3.2-1B-Instruct outputs)
"""

from __future__ import annotations

import json

import pytest

from app.api.tools import PARSERS, parser_for, template_renders_tools
from app.api.tools.hermes import HermesParser
from app.api.tools.llama3_json import Llama3JsonParser
from app.settings import TOOL_CALL_PARSERS

hermes = HermesParser()
llama = Llama3JsonParser()


def test_every_parser_setting_has_a_registered_parser() -> None:
    assert set(TOOL_CALL_PARSERS) == set(PARSERS) | {"auto"}


# -- Hermes / Qwen ------------------------------------------------------------------------------------------------
def test_hermes_tool_call_between_tags() -> None:
    text = """<tool_call>
{"name": "final_answer", "arguments": {"trigger": true}}
</tool_call>"""
    parsed = hermes.extract(text)
    assert parsed.content is None
    assert [(c.name, c.arguments) for c in parsed.calls] == [("final_answer", '{"trigger": true}')]


def test_hermes_tool_call_until_eos() -> None:
    text = """<tool_call>
{"name": "final_answer", "arguments": {"trigger": true}}"""
    assert [(c.name, c.arguments) for c in hermes.extract(text).calls] == [("final_answer", '{"trigger": true}')]


def test_hermes_invalid_json_stays_content() -> None:
    text = """<tool_call>
{"name": "final_answer", "arguments": {"trigger": true}"""
    parsed = hermes.extract(text)
    assert parsed.calls == () and parsed.content == text


def test_hermes_plain_text_is_content() -> None:
    text = "This is not a tool call."
    assert hermes.extract(text).calls == () and hermes.extract(text).content == text


def test_hermes_content_then_call_and_several_calls() -> None:
    parsed = hermes.extract(
        "Sure, let me check the weather."
        '<tool_call>{"name": "get_weather", '
        '"arguments": {"city": "NYC"}}</tool_call>'
    )
    assert parsed.content == "Sure, let me check the weather."
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [("get_weather", {"city": "NYC"})]
    two = hermes.extract(
        '<tool_call>{"name": "search", "arguments": {"q": "cats"}}</tool_call>'
        '<tool_call>{"name": "search", "arguments": {"q": "dogs"}}</tool_call>'
    )
    assert [json.loads(c.arguments) for c in two.calls] == [{"q": "cats"}, {"q": "dogs"}]
    assert len({c.id for c in two.calls}) == 2


def test_hermes_holds_back_a_call_while_streaming() -> None:
    text = (
        "Sure, let me check the weather."
        '<tool_call>{"name": "get_weather", '
        '"arguments": {"city": "NYC"}}</tool_call>'
    )
    # Token by token (as characters): nothing from the marker on is ever released as text.
    released = [hermes.hold_from(text[:n]) for n in range(len(text) + 1)]
    assert max(released) == len("Sure, let me check the weather.")
    assert hermes.hold_from("Hello <tool") == len("Hello ")  # a marker may be arriving
    plain = "This is plain text with no tool calling involved."
    assert hermes.hold_from(plain) == len(plain)


# -- Llama 3.x JSON ---------------------------------------------------------------------------------------------------
def test_llama3_call_inside_text() -> None:
    parsed = llama.extract(
        'Here is the result: {"name": "getOpenIncidentsTool", "parameters": {}} Would you like to know more?'
    )
    assert parsed.content is None
    assert [(c.name, c.arguments) for c in parsed.calls] == [("getOpenIncidentsTool", "{}")]


def test_llama3_call_with_arguments_and_the_arguments_key() -> None:
    parsed = llama.extract('{"name": "searchTool", "parameters": {"query": "test query", "limit": 10}}')
    assert json.loads(parsed.calls[0].arguments) == {"query": "test query", "limit": 10}
    parsed = llama.extract('{"name": "searchTool", "arguments": {"query": "test"}}')
    assert parsed.calls[0].name == "searchTool" and json.loads(parsed.calls[0].arguments) == {"query": "test"}


def test_llama3_several_calls_joined_by_semicolons() -> None:
    parsed = llama.extract(
        '{"name": "searchTool", "parameters": {"query": "test1"}}; '
        '{"name": "getOpenIncidentsTool", "parameters": {}}; '
        '{"name": "searchTool", "parameters": {"query": "test2"}}'
    )
    assert [c.name for c in parsed.calls] == ["searchTool", "getOpenIncidentsTool", "searchTool"]
    assert json.loads(parsed.calls[2].arguments) == {"query": "test2"}


def test_llama3_nested_and_quoted_arguments() -> None:
    parsed = llama.extract(
        '{"name": "searchTool", '
        '"parameters": {'
        '"query": "test {value} [complex]",'
        '"nested": {"inner": "more {brackets}"}'
        "}}"
    )
    args = json.loads(parsed.calls[0].arguments)
    assert args == {"query": "test {value} [complex]", "nested": {"inner": "more {brackets}"}}
    escaped = llama.extract('{"name": "parserTool", "parameters": {"text": "He said \\"Hello {world}\\""}}')
    assert json.loads(escaped.calls[0].arguments) == {"text": 'He said "Hello {world}"'}


@pytest.mark.parametrize(
    "text",
    [
        "This is just some text without any tool calls",
        '{"name": "invalidTool", "parameters": {invalid json}',
        '{"parameters": {}}',
        '{"name": "toolWithoutParams"}',
    ],
)
def test_llama3_non_calls_stay_content(text: str) -> None:
    parsed = llama.extract(text)
    assert parsed.calls == () and parsed.content == text


def test_llama3_python_tag_and_streaming_hold() -> None:
    assert llama.extract('<|python_tag|>{"name": "x", "parameters": {"a": 1}}').calls[0].name == "x"
    assert llama.hold_from('{"name": "x", "par') == 0
    assert llama.hold_from("<|pyth") == 0
    assert llama.hold_from("The answer is {x}") == len("The answer is {x}")


# -- choosing the parser -------------------------------------------------------------------------------------------
QWEN_LIKE = "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>{% endif %}<tool_call>"
LLAMA_LIKE = "{% if tools %}Environment: ipython{% endif %}<|python_tag|>"


def test_parser_follows_the_setting_or_the_chat_template() -> None:
    assert isinstance(parser_for("llama3_json", QWEN_LIKE), Llama3JsonParser)
    assert isinstance(parser_for("auto", QWEN_LIKE), HermesParser)
    assert isinstance(parser_for("auto", LLAMA_LIKE), Llama3JsonParser)
    assert isinstance(parser_for("auto", "{{ messages }}"), HermesParser)  # no tool format: Hermes in the system prompt
    assert template_renders_tools(QWEN_LIKE) and not template_renders_tools("{{ messages }}")
