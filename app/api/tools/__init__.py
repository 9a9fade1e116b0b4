"""Tool calling: one parser per model family (registered by name), rendering, tool_choice and streamed output."""

from app.api.tools import hermes, llama3_json  # noqa: F401  (registers the parsers)
from app.api.tools.calls import ParsedOutput, ToolCall
from app.api.tools.parser import PARSERS, ToolCallParser, parser_for, template_renders_tools
from app.api.tools.plan import Delta, OutputShaper, ToolChoiceError, ToolPlan

__all__ = [
    "PARSERS",
    "Delta",
    "OutputShaper",
    "ParsedOutput",
    "ToolCall",
    "ToolCallParser",
    "ToolChoiceError",
    "ToolPlan",
    "parser_for",
    "template_renders_tools",
]
