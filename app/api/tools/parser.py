"""The tool-call format of a model family: how tools are described to a model whose chat template cannot render
them, how its calls and their results are written back into the conversation, and how its output is parsed.

One subclass per family, registered by name (the TOOL_CALL_PARSER setting), as vLLM's tool_parsers/ does.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any, ClassVar, TypeVar

from app.api.tools.calls import ParsedOutput, ToolCall

PARSERS: dict[str, type[ToolCallParser]] = {}
P = TypeVar("P", bound=type["ToolCallParser"])


def register(cls: P) -> P:
    PARSERS[cls.name] = cls
    return cls


class ToolCallParser(ABC):
    name: ClassVar[str]
    # Strings in a chat template that show it was written for this family's tool format.
    template_markers: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def extract(self, text: str) -> ParsedOutput:
        """Split a complete output into user-facing content and tool calls; malformed calls stay content."""

    @abstractmethod
    def hold_from(self, text: str) -> int:
        """While streaming `text` (the output so far): the index from which it may be a tool call, to hold back."""

    @abstractmethod
    def system_prompt(self, tools: list[dict[str, Any]]) -> str:
        """The tool description for a system message, where the chat template does not render `tools`."""

    @abstractmethod
    def render_calls(self, calls: list[ToolCall]) -> str:
        """An assistant turn's tool calls as the model writes them, where the template cannot render `tool_calls`."""

    def render_result(self, content: str) -> str:
        """One tool result as a user-turn text, where the template has no `tool` role."""
        return content

    @staticmethod
    def tool_json(tools: list[dict[str, Any]]) -> str:
        return "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)


def template_renders_tools(chat_template: str | None) -> bool:
    """Whether the chat template takes a `tools` argument (transformers' apply_chat_template(tools=...))."""
    return bool(chat_template) and "tools" in str(chat_template)


def parser_for(setting: str, chat_template: str | None) -> ToolCallParser:
    """The parser TOOL_CALL_PARSER names; for "auto", the family the chat template was written for (Hermes when the
    template knows no tool format: the tools are then described in the system prompt in Hermes' format)."""
    if setting != "auto":
        return PARSERS[setting]()
    template = str(chat_template or "")
    for cls in PARSERS.values():
        if any(marker in template for marker in cls.template_markers):
            return cls()
    return PARSERS["hermes"]()


def suffix_prefix_len(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker` (a marker that may be arriving)."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
