"""Tool calls as the API hands them out, and what a model's output holds once parsed."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = field(default_factory=new_call_id)

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ParsedOutput:
    content: str | None  # text meant for the user (None when the output was only tool calls)
    calls: tuple[ToolCall, ...] = ()


def arguments_text(value: Any) -> str:
    """Arguments as JSON text: models write an object, clients and the OpenAI API carry a string."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def call_from_object(obj: Any) -> ToolCall | None:
    """A call from `{"name": ..., "arguments"|"parameters": {...}}`, the object every supported family writes."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    for key in ("arguments", "parameters"):
        if key in obj:
            return ToolCall(name=obj["name"], arguments=arguments_text(obj[key]))
    return None
