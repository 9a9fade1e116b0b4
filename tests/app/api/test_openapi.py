"""/openapi.json tells the truth: each route's error statuses in the one named error shape, no 422 the service never
sends, no admin routes; and a route that documents 401 or 415 does answer them."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.app.conftest import KeyFiles

ERROR_REF = "#/components/schemas/ErrorResponse"
ALL_ERRORS = {"400", "401", "403", "413", "415", "429", "503"}


def _errors(schema: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    responses = schema["paths"][path][method]["responses"]
    return {status: r for status, r in responses.items() if status[0] in "45"}


def test_each_route_documents_the_errors_it_can_answer_in_the_error_shape(service: TestClient) -> None:
    schema = service.get("/openapi.json").json()
    assert schema["components"]["schemas"]["ErrorResponse"]["properties"]["error"] == {
        "$ref": "#/components/schemas/ErrorDetail"
    }
    assert set(schema["components"]["schemas"]["ErrorDetail"]["required"]) == {"type", "message", "code"}
    for path, method in (("/api/chat", "post"), ("/v1/chat/completions", "post")):
        assert set(_errors(schema, path, method)) == ALL_ERRORS | {"504"} | (
            {"404"} if path.startswith("/v1") else set()
        ), path
    assert set(_errors(schema, "/api/auth", "post")) == {"400", "401", "403", "413", "415", "429", "503"}
    assert set(_errors(schema, "/v1/models", "get")) == {"401", "403", "429", "503"}
    assert set(_errors(schema, "/readyz", "get")) == {"503"}  # probes: exempt from the network rules
    assert set(_errors(schema, "/healthz", "get")) == {"503"}  # a dead engine fails liveness
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert "422" not in operation["responses"], (path, method)  # validation errors are answered as 400
            for status, response in _errors(schema, path, method).items():
                assert response["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}, (path, status)
                if status in ("429", "503"):
                    assert "Retry-After" in response["headers"], (path, status)
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_admin_routes_are_left_out_of_the_public_schema(service: TestClient) -> None:
    paths = service.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/admin")]
    assert {"/api/auth", "/api/chat", "/v1/chat/completions", "/v1/models"} <= set(paths)


def test_the_documented_401_and_415_are_what_the_routes_answer(service: TestClient, keyfiles: KeyFiles) -> None:
    schema = service.get("/openapi.json").json()
    token = service.post("/api/auth", json={"api_key": keyfiles.raw["alice"]}).json()["token"]
    for path, operations in schema["paths"].items():
        for method in operations:
            documented = set(_errors(schema, path, method))
            if "415" in documented:
                headers = {"Content-Type": "text/plain", "Authorization": f"Bearer {token}"}
                assert service.request(method, path, content=b"messages=hi", headers=headers).status_code == 415, path
            if "401" in documented and path != "/api/auth":
                assert service.request(method, path).status_code == 401, path


def _body_validator(schema: dict[str, Any], path: str) -> Any:
    """A validator for `path`'s request body as /openapi.json publishes it."""
    from jsonschema import Draft202012Validator

    body = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return Draft202012Validator({**body, "components": schema["components"]})


# Bodies the schema and the service agree to refuse: a schema-valid body the service refused (or the reverse) is what
# schemathesis reported (issue 22, item 7).
REFUSED_BODIES = {
    "no messages": ("/v1/chat/completions", {"messages": []}),
    "strict as 0": (
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f", "strict": 0}}],
        },
    ),
    "stream as 1": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": 1}),
    "an unknown role": ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}),
    "no input items": ("/v1/responses", {"input": []}),
    "an object as item content": ("/v1/responses", {"input": [{"role": "user", "content": {"text": "hi"}}]}),
    "an unknown item type": ("/v1/responses", {"input": [{"type": "item_reference", "id": "x"}]}),
    "text.format strict as 0": ("/v1/responses", {"input": "hi", "text": {"format": {"type": "text", "strict": 0}}}),
    "a user message without content": ("/v1/chat/completions", {"messages": [{"role": "user"}]}),
    "an assistant message without content or calls": (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": []}]},
    ),
    "a tool result without tool_call_id": (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}]},
    ),
    "a json_schema response_format without its schema": (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_schema"}},
    ),
    "a json_schema text.format without its schema": (
        "/v1/responses",
        {"input": "hi", "text": {"format": {"type": "json_schema", "name": "r"}}},
    ),
}


def test_bodies_the_service_refuses_are_invalid_in_the_published_schema(service: TestClient) -> None:
    """(tests/app/api/test_hostile_input.py holds the service to refusing each with a 400.)"""
    schema = service.get("/openapi.json").json()
    for name, (path, body) in REFUSED_BODIES.items():
        assert not _body_validator(schema, path).is_valid(body), name


def test_served_responses_items_are_valid_in_the_published_schema(service: TestClient) -> None:
    validator = _body_validator(service.get("/openapi.json").json(), "/v1/responses")
    items = [
        {"role": "system", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{\"city\": \"Paris\"}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
    ]
    assert validator.is_valid({"input": items, "stream": True})
    chat = _body_validator(service.get("/openapi.json").json(), "/v1/chat/completions")
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
    assert chat.is_valid(
        {
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ],
            "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {}}},
        }
    )


def test_streams_are_documented_as_events_of_the_published_shapes(service: TestClient) -> None:
    schema = service.get("/openapi.json").json()
    for path, payloads in (
        ("/v1/chat/completions", {"ChatCompletionChunk", "ErrorResponse"}),
        ("/v1/responses", {"ResponseStreamEvent"}),
    ):
        event = schema["paths"][path]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
        data = event["properties"]["data"]
        json_data = data.get("else", data)
        assert json_data["contentMediaType"] == "application/json", path
        assert {ref["$ref"].rsplit("/", 1)[1] for ref in json_data["contentSchema"]["anyOf"]} == payloads, path
        assert payloads <= set(schema["components"]["schemas"]), path


def test_every_200_body_is_a_named_model_and_a_stream_is_documented_as_server_sent_events(service: TestClient) -> None:
    schema = service.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    streams = set()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            content = operation["responses"]["200"]["content"]
            ref = content["application/json"]["schema"].get("$ref", "")
            assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in components, (
                path,
                method,
                content,
            )
            if "text/event-stream" in content:
                streams.add(path)
    assert streams == {"/v1/chat/completions", "/v1/responses"}
    # What each `data:` of a chat completion stream carries is documented too.
    assert (
        "ChatCompletionChunk" in components
        and "ChatCompletionChunk" in schema["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["description"]
    )
