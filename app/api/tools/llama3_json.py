"""Llama 3.1-3.3 JSON tool calls: `{"name": ..., "parameters": {...}}` (several joined by `;`), optionally after
`<|python_tag|>`, which is a special token and usually already gone from the decoded text."""

from __future__ import annotations

import json
from typing import Any

from app.api.tools.calls import ParsedOutput, ToolCall, call_from_object
from app.api.tools.parser import ToolCallParser, register

PYTHON_TAG = "<|python_tag|>"


@register
class Llama3JsonParser(ToolCallParser):
    name = "llama3_json"
    template_markers = (PYTHON_TAG, "ipython")

    def extract(self, text: str) -> ParsedOutput:
        body = text.replace(PYTHON_TAG, "")
        decoder = json.JSONDecoder()
        calls: list[ToolCall] = []
        pos = body.find("{")
        while pos >= 0:
            try:
                obj, end = decoder.raw_decode(body, pos)
            except ValueError:
                pos = body.find("{", pos + 1)
                continue
            call = call_from_object(obj)
            if call is not None:
                calls.append(call)
            pos = body.find("{", end)  # an object that is not a call is skipped whole, never searched inside
        return ParsedOutput(content=None, calls=tuple(calls)) if calls else ParsedOutput(content=text)

    def hold_from(self, text: str) -> int:
        stripped = text.lstrip()
        lead = len(text) - len(stripped)
        if not stripped or stripped.startswith(("{", PYTHON_TAG)) or PYTHON_TAG.startswith(stripped):
            return lead  # the output opens like a call: hold it until the end decides
        return len(text)

    def system_prompt(self, tools: list[dict[str, Any]]) -> str:
        return (
            "Given the following functions, please respond with a JSON for a function call with its proper arguments "
            "that best answers the given prompt.\n\n"
            'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. '
            "Do not use variables.\n\n" + self.tool_json(tools)
        )

    def render_calls(self, calls: list[ToolCall]) -> str:
        return "; ".join(f'{{"name": {json.dumps(c.name)}, "parameters": {c.arguments}}}' for c in calls)
