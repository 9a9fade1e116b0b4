"""Bounds on tools and tool-call histories, so an absurd one is a quick 400 rather than minutes of prefill.

docs/api/limits.md states them for clients. OpenAI's own API holds tools to 128 and function names to 64 characters.
"""

from __future__ import annotations

import re
from typing import Any

MAX_TOOLS = 128  # function tools in one request
MAX_TOOL_CALLS = 128  # tool calls in one assistant message
MAX_FUNCTION_NAME_CHARS = 64  # a function's name, in tools and in the calls of a history
MAX_TOOL_CALL_ID_CHARS = 256  # a tool call's id, and the tool_call_id of its result
MAX_ARGUMENT_DEPTH = 32  # nesting of the JSON arguments of a tool call

_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def json_text_depth(text: str) -> int:
    """How deep arrays and objects nest in JSON text (not necessarily valid JSON), without parsing it recursively."""
    depth = deepest = 0
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth = max(depth - 1, 0)
    return deepest


def json_value_depth(value: Any) -> int:
    """How deep arrays and objects nest in a decoded JSON value, walked without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        else:
            continue
        deepest = max(deepest, depth + 1)
    return deepest
