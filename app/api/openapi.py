"""The OpenAPI schema as the service behaves: every error a route can answer, each in the one error shape.

FastAPI documents a 422 for request validation, which this service answers as 400, and nothing of
what the middleware and the route rules refuse. Each operation's errors are derived here from what
decides them: the network rules (403, except on the probes), a request body (400, 413, 415), the
route's rule in app.api.auth (401, 403, 429, 503 for credentials; the statuses only it answers).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from app.api.auth import ROUTE_RULES, RouteRule
from app.api.middleware.network_rules import PROBE_PATHS
from app.api.schemas import ChatCompletionChunk, ErrorResponse
from app.api.schemas.responses_events import ResponseStreamEvent
from app.api.serving import DEADLINE_HEADER, MAX_TOKENS_HEADER

SCHEMA_PREFIX = "#/components/schemas/"
DESCRIPTIONS: dict[int, str] = {
    400: "Invalid request: a field, a message, max_tokens, or a prompt over the context window",
    401: "Missing, invalid, expired or revoked credentials",
    403: "The client address is refused (ALLOWED_CIDRS, BLOCKED_CIDRS), or the key lacks the route's scope",
    404: "Not found: an unknown console asset, or a model this service does not serve",
    413: "The body is larger than MAX_BODY_BYTES",
    415: "Content-Type is not application/json",
    429: "A rate limit, the key's token budget or concurrency cap, too many failed authentications from the "
    "address, or a full queue; retry after Retry-After seconds",
    503: "Starting, loading the model, not ready, shutting down, the engine failed, or the conversation store is "
    "unavailable; retry after Retry-After seconds",
    504: "GENERATION_TIMEOUT_SECONDS passed before the first token (an answer it cuts short is a 200 with "
    "finish_reason length and X-Generation-Deadline)",
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
# On the 200 of every route that generates (a key-slot route).
GENERATION_HEADERS = {
    MAX_TOKENS_HEADER: {
        "description": "the output cap that applied: max_tokens clamped to MAX_TOKENS and to the room "
        "the prompt leaves in the context window",
        "schema": {"type": "integer"},
    },
    DEADLINE_HEADER: {
        "description": "only on an answer GENERATION_TIMEOUT_SECONDS ended (not on a stream): that deadline, "
        "in seconds; the answer holds what was generated, with finish_reason length",
        "schema": {"type": "number"},
    },
}
# What a stream's events carry, documented beside the error shape (no route returns them as JSON).
STREAM_SCHEMAS = (ChatCompletionChunk, ResponseStreamEvent)
# FastAPI's validation-error schemas, dropped with the 422s that used them.
FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def event_stream(description: str, *payloads: str, done: bool = False) -> dict[str, Any]:
    """A 200's `text/event-stream` content: each event (Open API 3.1 has the schema describe one event, as
    {event, data, id, retry}) carries JSON `data` matching one of the named component schemas, or `[DONE]`."""
    json_data = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"anyOf": [{"$ref": SCHEMA_PREFIX + name} for name in payloads]},
    }
    data = {"if": {"const": "[DONE]"}, "else": json_data} if done else json_data
    event = {"type": "object", "required": ["data"], "properties": {"event": {"type": "string"}, "data": data}}
    return {"description": description, "content": {"text/event-stream": {"schema": event}}}


def error_statuses(path: str, operation: dict[str, Any], rule: RouteRule) -> set[int]:
    statuses = set(rule.errors)
    if path not in PROBE_PATHS:
        statuses.add(403)
    if "requestBody" in operation:
        statuses |= {400, 413, 415}
    if operation.get("parameters"):
        statuses.add(400)
    if rule.credentials != "none":
        statuses |= {401, 429, 503}
    return statuses


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the error responses (and the generation headers) to every operation of `schema`, in place (idempotent)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (ErrorResponse, *STREAM_SCHEMAS):
        model_schema = model.model_json_schema(ref_template=SCHEMA_PREFIX + "{model}", mode="serialization")
        components.update(model_schema.pop("$defs", {}))
        components[model.__name__] = model_schema
    for path, operations in schema.get("paths", {}).items():
        rule = ROUTE_RULES[path]
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            if rule.key_slot and "200" in responses:
                responses["200"]["headers"] = GENERATION_HEADERS
            for status in sorted(error_statuses(path, operation, rule)):
                response: dict[str, Any] = {
                    "description": DESCRIPTIONS[status],
                    "content": {"application/json": {"schema": {"$ref": SCHEMA_PREFIX + ErrorResponse.__name__}}},
                }
                if status in (429, 503):
                    response["headers"] = RETRY_AFTER
                responses[str(status)] = response
    for name in FASTAPI_VALIDATION_SCHEMAS:
        components.pop(name, None)
    return schema


def install_openapi(app: FastAPI) -> None:
    """Serve `document_errors` of FastAPI's generated schema at /openapi.json (and in /docs)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        return document_errors(generate())

    app.openapi = openapi  # type: ignore[method-assign]
