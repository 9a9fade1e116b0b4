"""Request and response bodies of the seed API, Chat Completions and the Responses API."""
from app.api.schemas.chat import (
    ChatCompletionRequest, ChatMessage, ChatTool, ContentPart, ResponseFormat, SeedChatRequest, StreamOptions,
)
from app.api.schemas.common import (
    AuthRequest, ErrorDetail, ErrorResponse, GenerationFields, model_card, usage_dict,
)
from app.api.schemas.responses import ResponsesRequest, ResponsesTool

__all__ = [
    "AuthRequest", "ChatCompletionRequest", "ErrorDetail", "ErrorResponse", "ChatMessage", "ChatTool", "ContentPart", "GenerationFields",
    "ResponseFormat", "ResponsesRequest", "ResponsesTool", "SeedChatRequest", "StreamOptions",
    "model_card", "usage_dict",
]
