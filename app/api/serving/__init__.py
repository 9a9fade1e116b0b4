"""The serving layer: it owns a chat request's whole life, from a parsed body to a recorded answer or a finished stream.

`ChatRunner` (runner.py) is what the routes call; `JobBuilder` (preparation.py) checks messages and renders the
prompt; engine_calls.py submits to the engine and maps its refusals to HTTP errors; jobs.py holds what passes
between them. See docs/architecture/request-flow.md.
"""

from app.api.serving.jobs import DEADLINE_HEADER, MAX_TOKENS_HEADER, Answer, ChatJob, ChatResult, OutputRequest
from app.api.serving.runner import ChatRunner, StreamFormat

__all__ = [
    "DEADLINE_HEADER",
    "MAX_TOKENS_HEADER",
    "Answer",
    "ChatJob",
    "ChatResult",
    "ChatRunner",
    "OutputRequest",
    "StreamFormat",
]
