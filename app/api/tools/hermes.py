"""Hermes 2 Pro / Qwen 2.5+ tool calls: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one per call."""

from __future__ import annotations

import json
import re
from typing import Any

from app.api.tools.calls import ParsedOutput, ToolCall, call_from_object
from app.api.tools.parser import ToolCallParser, register, suffix_prefix_len

START, END = "<tool_call>", "</tool_call>"
# A call runs to its closing tag, or to the end of the output when the model stopped right after the JSON.
_CALL = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(?!.*<tool_call>)(.*)", re.DOTALL)


@register
class HermesParser(ToolCallParser):
    name = "hermes"
    template_markers = (START,)

    def extract(self, text: str) -> ParsedOutput:
        start = text.find(START)
        if start < 0:
            return ParsedOutput(content=text)
        calls: list[ToolCall] = []
        for match in _CALL.finditer(text, start):
            body = (match.group(1) if match.group(1) is not None else match.group(2)).strip()
            try:
                call = call_from_object(json.loads(body))
            except ValueError:
                call = None
            if call is None:
                return ParsedOutput(content=text)  # not a well-formed call: the user sees what the model wrote
            calls.append(call)
        return ParsedOutput(content=text[:start] or None, calls=tuple(calls))

    def hold_from(self, text: str) -> int:
        start = text.find(START)
        return start if start >= 0 else len(text) - suffix_prefix_len(text, START)

    def system_prompt(self, tools: list[dict[str, Any]]) -> str:
        return (
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{self.tool_json(tools)}\n</tools>\n\n"
            "For each function call, return a json object with function name and arguments within "
            "<tool_call></tool_call> XML tags:\n"
            '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
        )

    def render_calls(self, calls: list[ToolCall]) -> str:
        return "\n".join(f'{START}\n{{"name": {json.dumps(c.name)}, "arguments": {c.arguments}}}\n{END}' for c in calls)

    def render_result(self, content: str) -> str:
        return f"<tool_response>\n{content}\n</tool_response>"
