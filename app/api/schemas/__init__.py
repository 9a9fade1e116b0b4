"""Request and response bodies of the seed API, Chat Completions and the Responses API."""
from app.api.schemas.chat import (
    ChatCompletionRequest, ChatMessage, ChatTool, ContentPart, ResponseFormat, SeedChatRequest, StreamOptions,
)
from app.api.schemas.common import (
    AuthRequest, ErrorDetail, ErrorResponse, GenerationFields,
)
from app.api.schemas.chat_response import (
    AssistantMessage, AuthToken, ChatCompletion, ChatCompletionChoice, ChatCompletionChunk, ChunkChoice, ChunkDelta,
    FunctionCallDelta, FunctionCallOut, Health, ModelCard, ModelList, Readiness, SeedChatResponse, SeedMessage,
    ToolCallDelta, ToolCallOut, Usage,
)
from app.api.schemas.responses import ResponsesRequest, ResponsesTool
from app.api.schemas.responses_response import (
    FunctionCallItem, MessageItem, OutputText, ResponseError, ResponseObject, ResponseUsage,
)

__all__ = [
    "AuthRequest", "ChatCompletionRequest", "ErrorDetail", "ErrorResponse", "ChatMessage", "ChatTool", "ContentPart", "GenerationFields",
    "ResponseFormat", "ResponsesRequest", "ResponsesTool", "SeedChatRequest", "StreamOptions",
    "AssistantMessage", "AuthToken", "ChatCompletion", "ChatCompletionChoice", "ChatCompletionChunk", "ChunkChoice",
    "ChunkDelta", "FunctionCallDelta", "FunctionCallItem", "FunctionCallOut", "Health", "MessageItem", "ModelCard",
    "ModelList", "OutputText", "Readiness", "ResponseError", "ResponseObject", "ResponseUsage", "SeedChatResponse",
    "SeedMessage", "ToolCallDelta", "ToolCallOut", "Usage",
]
