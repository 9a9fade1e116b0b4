"""What a request asks of tools (`tools`, `tool_choice`, `parallel_tool_calls`) and how its output becomes calls.

`auto` lets the model write calls in its family's format, found by the parser. `required` and a named function are
enforced by grammar (app.inference.constraints): the output is then the JSON itself, as vLLM does it — a named
call's arguments object, or for `required` an array of `{"name", "arguments"}` objects — so it is valid against
the tools' parameter schemas whatever the model, and needs no parsing by format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from app.api.tools.calls import ParsedOutput, ToolCall, call_from_object
from app.api.tools.parser import ToolCallParser

Mode = Literal["none", "auto", "required", "named"]
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


class ToolChoiceError(ValueError):
    """tool_choice or tools do not fit together; the message names the field."""


@dataclass(frozen=True)
class Delta:
    """One piece of a streamed answer: text for the user, or (part of) the tool call at `call_index`."""

    text: str = ""
    call_index: int | None = None
    call: ToolCall | None = None  # set on a call's first piece: its id and name
    arguments: str = ""


@dataclass(frozen=True)
class ToolPlan:
    mode: Mode
    tools: tuple[dict[str, Any], ...]  # OpenAI function tools shown to the model; empty for "none"
    parser: ToolCallParser
    forced: str | None = None  # the function a named tool_choice forces
    parallel: bool = True

    @classmethod
    def of(
        cls,
        tools: list[dict[str, Any]],
        choice: str | dict[str, Any] | None,
        parallel: bool | None,
        parser: ToolCallParser,
    ) -> ToolPlan:
        names = [t["function"]["name"] for t in tools]
        if choice is None:
            choice = "auto" if tools else "none"
        if isinstance(choice, dict):
            name = choice["function"]["name"]
            if name not in names:
                listed = ", ".join(names) or "none"
                raise ToolChoiceError(f"tool_choice names function {name!r}, which is not in tools ({listed})")
            return cls("named", tuple(tools), parser, forced=name, parallel=False)
        if choice != "none" and not tools:
            raise ToolChoiceError(f"tool_choice {choice!r} needs at least one function in tools")
        if choice == "none":
            return cls("none", (), parser)
        return cls(choice, tuple(tools), parser, parallel=parallel is not False)  # type: ignore[arg-type]

    def _parameters(self, name: str) -> dict[str, Any]:
        tool = next(t for t in self.tools if t["function"]["name"] == name)
        return tool["function"].get("parameters") or EMPTY_PARAMETERS

    def schema(self) -> dict[str, Any] | None:
        """The JSON Schema the output must match, for the modes enforced by grammar."""
        if self.mode == "named":
            return self._parameters(self.forced or "")
        if self.mode != "required":
            return None
        one_call = [
            {
                "type": "object",
                "properties": {
                    "name": {"const": t["function"]["name"]},
                    "arguments": self._parameters(t["function"]["name"]),
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in self.tools
        ]
        return {
            "type": "array",
            "items": {"anyOf": one_call},
            "minItems": 1,
            **({} if self.parallel else {"maxItems": 1}),
        }

    def parse(self, text: str) -> ParsedOutput:
        """A complete output as content and calls."""
        if self.mode == "named":
            return ParsedOutput(content=None, calls=(ToolCall(name=self.forced or "", arguments=text),))
        if self.mode == "required":
            return _parse_call_array(text)
        if self.mode == "auto":
            parsed = self.parser.extract(text)
            return parsed if self.parallel or len(parsed.calls) <= 1 else ParsedOutput(parsed.content, parsed.calls[:1])
        return ParsedOutput(content=text)

    def shaper(self) -> OutputShaper:
        return OutputShaper(self)


def _parse_call_array(text: str) -> ParsedOutput:
    try:
        items = json.loads(text)
    except ValueError:
        return ParsedOutput(content=text)  # cut off by the length cap before the grammar could close it
    calls = [call_from_object(item) for item in items] if isinstance(items, list) else []
    if not calls or any(c is None for c in calls):
        return ParsedOutput(content=text)
    return ParsedOutput(content=None, calls=tuple(c for c in calls if c is not None))


@dataclass
class OutputShaper:
    """Turns the text deltas of a streamed generation into user text and tool-call pieces.

    Text that may be the start of a tool call is held back until the end; a named call's arguments stream as
    they come; every other call is sent whole once the output is complete.
    """

    plan: ToolPlan
    text: str = ""
    sent: int = 0  # characters of `text` already handed out (as text, or as a named call's arguments)
    named: ToolCall | None = None
    calls: tuple[ToolCall, ...] = field(default=())

    def feed(self, delta: str) -> list[Delta]:
        self.text += delta
        mode = self.plan.mode
        if mode == "named":
            out = []
            if self.named is None:
                self.named = ToolCall(name=self.plan.forced or "", arguments="")
                out.append(Delta(call_index=0, call=self.named))
            if delta:
                out.append(Delta(call_index=0, arguments=delta))
            self.sent = len(self.text)
            return out
        if mode == "required":
            return []
        limit = self.plan.parser.hold_from(self.text) if mode == "auto" else len(self.text)
        if limit <= self.sent:
            return []
        piece, self.sent = self.text[self.sent : limit], limit
        return [Delta(text=piece)]

    def finish(self) -> tuple[list[Delta], ParsedOutput]:
        """The pieces still to send once the output is complete, and the whole answer as content and calls."""
        if self.plan.mode == "named":
            out = self.feed("") if self.named is None else []
            assert self.named is not None
            call = ToolCall(name=self.named.name, arguments=self.text, id=self.named.id)
            return out, ParsedOutput(content=None, calls=(call,))
        held = self.text[self.sent :]
        parsed = self.plan.parse(held) if self.plan.mode != "none" else ParsedOutput(content=held)
        out = [Delta(text=parsed.content)] if parsed.content else []
        out += [Delta(call_index=i, call=c, arguments=c.arguments) for i, c in enumerate(parsed.calls)]
        content = self.text[: self.sent] + (parsed.content or "")
        return out, ParsedOutput(content=content or None, calls=parsed.calls)
