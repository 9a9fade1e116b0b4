"""Conversations with tools into what the chat template takes.

Where the template renders tools itself (Qwen 2.5, Llama 3.1, Hermes...), it gets `tools=` and the messages in
transformers' shape (tool-call arguments as objects). Where it does not (the embedded SmolLM2), the parser's family
format is written into the text: the tools into the system message, an assistant's calls into its content, tool
results into user turns, so the model sees one consistent format and the parser reads the same one back.
"""

from __future__ import annotations

import json
from typing import Any

from app.api.tools.calls import ToolCall
from app.api.tools.parser import ToolCallParser


def _calls_of(message: dict[str, Any]) -> list[ToolCall]:
    return [
        ToolCall(name=c["function"]["name"], arguments=c["function"]["arguments"], id=c.get("id") or "")
        for c in message.get("tool_calls") or ()
    ]


def _arguments_object(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments  # a client's malformed arguments are shown as written


def for_native_template(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": _arguments_object(c.arguments)},
                }
                for c in _calls_of(m)
            ]
        out.append(m)
    return out


def for_plain_template(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]], parser: ToolCallParser
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if tools:
        prompt = parser.system_prompt(tools)
        if messages and messages[0]["role"] == "system":
            out.append({"role": "system", "content": f"{messages[0]['content']}\n\n{prompt}"})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": prompt})
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = parser.render_calls(_calls_of(m))
            out.append({"role": "assistant", "content": f"{m['content']}\n{calls}" if m["content"] else calls})
        elif m["role"] == "tool":
            result = parser.render_result(m["content"])
            if out and out[-1].get("tool_results"):  # consecutive results form one user turn, as Qwen's template does
                out[-1]["content"] += "\n" + result
            else:
                out.append({"role": "user", "content": result, "tool_results": True})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return [{"role": m["role"], "content": m["content"]} for m in out]
