"""Unicode in every field: each string a request schema declares (keys of free-form objects too), poisoned in turn
with a lone surrogate, gets a 400 `invalid_unicode` naming its JSON path, before any route logic runs.

The string fields come from the request models' own JSON schemas, so a field added later is covered without
touching this test. The modelless app is enough: the check runs before the route needs a model.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from app.api.body_text import invalid_text
from app.api.schemas import AuthRequest, ChatCompletionRequest, ResponsesRequest, SeedChatRequest
from tests.app.conftest import KeyFiles

LONE = "\ud800"
_ids = itertools.count()


MARK = "@@"


def marker() -> str:
    return f"{MARK}{next(_ids)}"


def examples(schema: Any, defs: dict[str, Any]) -> list[Any]:
    """Values of `schema` that together put a distinct marker string in every place a string can be."""
    if not isinstance(schema, dict):
        return [marker()]
    if "$ref" in schema:
        return examples(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    branches = schema.get("anyOf") or schema.get("oneOf")
    if branches:
        return [value for branch in branches for value in examples(branch, defs)]
    kind = schema.get("type")
    if "const" in schema or "enum" in schema or kind == "string":
        return [marker()]
    if kind == "array":
        return [[item] for item in examples(schema.get("items", {}), defs)]
    if kind == "object" or "properties" in schema:
        per_property = {name: examples(sub, defs) for name, sub in schema.get("properties", {}).items()}
        extra = schema.get("additionalProperties")
        if extra is not None and extra is not False:
            per_property[marker()] = examples(extra, defs) if isinstance(extra, dict) else [marker()]
        count = max((len(v) for v in per_property.values()), default=1)
        return [{name: values[i % len(values)] for name, values in per_property.items()} for i in range(count)]
    return {"integer": [1], "number": [1.5], "boolean": [True], "null": [None]}.get(kind, [marker()])  # type: ignore[arg-type]


def strings(value: Any, path: str = "") -> Iterator[tuple[str, str, bool]]:
    """(path, marker, is_key) for every marker string in an example, in the error's path notation."""
    if isinstance(value, str) and value.startswith(MARK):
        yield path, value, False
    elif isinstance(value, dict):
        for key, item in value.items():
            if key.startswith(MARK):
                yield path, key, True
            yield from strings(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from strings(item, f"{path}[{i}]")


def poisoned(value: Any, target: str, is_key: bool) -> Any:
    if isinstance(value, str):
        return LONE + value if value == target and not is_key else value
    if isinstance(value, dict):
        return {(LONE + k if is_key and k == target else k): poisoned(v, target, is_key) for k, v in value.items()}
    if isinstance(value, list):
        return [poisoned(v, target, is_key) for v in value]
    return value


def cases(model: type[BaseModel]) -> list[tuple[Any, str, bool]]:
    schema = model.model_json_schema()
    out = []
    for body in examples(schema, schema.get("$defs", {})):
        for path, target, is_key in strings(body):
            out.append((poisoned(body, target, is_key), path, is_key))
    return out


ROUTES = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/responses": ResponsesRequest,
    "/api/chat": SeedChatRequest,
    "/api/auth": AuthRequest,
}


@pytest.mark.parametrize("route", list(ROUTES))
def test_every_string_field_poisoned_in_turn_is_a_400_naming_its_path(
    service: TestClient, keyfiles: KeyFiles, route: str
) -> None:
    key = keyfiles.raw["alice"]
    bearer = key if route != "/api/chat" else service.post("/api/auth", json={"api_key": key}).json()["token"]
    headers = {"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"}
    checked = set()
    for body, path, is_key in cases(ROUTES[route]):
        r = service.post(route, content=json.dumps(body).encode(), headers=headers)  # \ud800 as a JSON escape
        assert r.status_code == 400, (route, path, r.text)
        error = r.json()["error"]
        assert error["code"] == "invalid_unicode" and error["type"] == "invalid_request_error", error
        named = f"a key of {path or 'the body'}" if is_key else path
        assert error["message"].startswith(f"{named} is not valid Unicode text: it holds a lone surrogate (\\ud800)"), (
            error
        )
        checked.add(path)
    assert len(checked) >= {"/api/auth": 1, "/api/chat": 10, "/v1/chat/completions": 25, "/v1/responses": 15}[route]


def test_the_fields_the_campaign_found_are_among_them() -> None:
    paths = {path for model in (ChatCompletionRequest, ResponsesRequest) for _, path, _ in cases(model)}
    for field in (
        "tools[0].function.description",
        "messages[0].tool_call_id",
        "messages[0].tool_calls[0].id",
        "messages[0].tool_calls[0].function.name",
        "messages[0].tool_calls[0].function.arguments",
        "text.format.name",
        "text.format.description",
        "tools[0].description",
        "metadata",
    ):
        assert field in paths, (field, sorted(paths))


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            {"a": ["ok", {"b": "x\udc00\ud800"}]},
            "a[1].b is not valid Unicode text: it holds a lone surrogate (\\udc00) at character 1",
        ),
        (
            {"tools": [{"function": {"parameters": {"properties": {"\udfff": {}}}}}]},
            "a key of tools[0].function.parameters.properties is not valid",
        ),
        ("\ud800", "the body is not valid Unicode text"),
    ],
)
def test_reversed_pairs_keys_and_the_path_named(body: Any, reason: str) -> None:
    found = invalid_text(body)
    assert found is not None and found.startswith(reason), found


def test_valid_text_passes() -> None:
    assert (
        invalid_text({"messages": [{"content": "emoji \U0001f600, accents é, CJK 漢字"}], "n": [1, 2.5, None, True]})
        is None
    )
