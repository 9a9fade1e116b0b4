"""Schema, regex and enum bombs, and schemas the grammar would not enforce, are refused before any compile, with a
message that names the limit or the keyword; the schemas real clients send (pydantic models, OpenAI tools) pass."""

from __future__ import annotations

import datetime
import enum
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from app.inference.schema_limits import (
    SchemaLimits,
    SchemaTooComplex,
    UnenforceableSchema,
    check_schema,
    repetition_weight,
)


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


# The campaign's bombs (issue 22), each of which stalled a replica for seconds.
BOMBS = {
    "a 200 KB pattern": ({"type": "string", "pattern": "a" * 200_000}, "characters"),
    "nesting depth 300": (nested(300), "levels"),
    "an enum of 10,000 strings": ({"enum": [f"value-{i}" for i in range(10_000)]}, "per enum"),
    "maxLength 10^9": ({"type": "string", "maxLength": 10**9}, "'maxLength'"),
    "anyOf with 2,000 branches": (
        {"anyOf": [{"type": "object", "properties": {f"k{i}": {"type": "integer"}}} for i in range(2_000)]},
        "subschemas",
    ),
    "5,000 required properties": (
        {
            "type": "object",
            "properties": {f"p{i}": {"type": "integer"} for i in range(5_000)},
            "required": [f"p{i}" for i in range(5_000)],
        },
        "characters as JSON",
    ),
    "2,500 small properties": (
        {"type": "object", "properties": {f"{i}": {"type": "integer"} for i in range(2_500)}},
        "subschemas",
    ),
    "(a{1,100}){1,100}": ({"type": "string", "pattern": "(a{1,100}){1,100}"}, "repeats 10000 times"),
    "a{1,10000}": ({"type": "string", "pattern": "^a{1,10000}$"}, "repeats 10000 times"),
    "500 enum values of 100 characters": ({"enum": ["x" * 100 + str(i) for i in range(500)]}, "characters of JSON"),
    "a 1 MB schema": ({"type": "object", "description": "d" * 1_000_000}, "characters as JSON"),
}


UNENFORCEABLE = {
    "$ref to a URL": ({"$ref": "https://example.com/schema.json"}, "'$ref' at #/$ref"),
    "$ref to a file": ({"type": "object", "properties": {"a": {"$ref": "file:///etc/passwd"}}}, "#/properties/a/$ref"),
    "$ref to an anchor": ({"$ref": "#thing"}, "only references inside the schema"),
    "not {}": ({"not": {}}, "'not' at #/not"),
    "allOf of string and integer": ({"allOf": [{"type": "string"}, {"type": "integer"}]}, "'allOf' at #/allOf has 2"),
    "if/then": ({"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}, "'if'"),
    "uniqueItems": ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "'uniqueItems'"),
    "contains": ({"type": "array", "contains": {"const": 1}}, "'contains'"),
    "propertyNames": ({"type": "object", "propertyNames": {"pattern": "^a"}}, "'propertyNames'"),
    "dependentRequired": ({"type": "object", "dependentRequired": {"a": ["b"]}}, "'dependentRequired'"),
    "a format it ignores": ({"type": "string", "format": "password"}, "'format' at #/format is 'password'"),
    "a lookahead": ({"type": "string", "pattern": "(?=a)b"}, "lookaround"),
    "multipleOf on numbers": ({"type": "number", "multipleOf": 0.5}, "'multipleOf'"),
    "a large multipleOf": ({"type": "integer", "multipleOf": 4096}, "up to 1024"),
    "required without a property": (
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a", "b"]},
        "names 'b'",
    ),
    "a constraint beside $ref": (
        {"$defs": {"s": {"type": "string"}}, "$ref": "#/$defs/s", "maxLength": 3},
        "'maxLength' at #/maxLength sits beside '$ref'",
    ),
    "a type beside anyOf": ({"type": "string", "anyOf": [{"type": "string", "maxLength": 1}]}, "sits beside 'anyOf'"),
    "maxLength without a type": ({"maxLength": 1}, "declares no 'type'"),
    "an enum value of another type": ({"type": "integer", "enum": [1, "two"]}, "not of the declared type integer"),
    "an empty anyOf": ({"anyOf": []}, "non-empty"),
    "unevaluatedProperties as a schema": (
        {"type": "object", "unevaluatedProperties": {"type": "string"}},
        "true or false",
    ),
}


REFUSED = {
    **{name: (SchemaTooComplex, *case) for name, case in BOMBS.items()},
    **{name: (UnenforceableSchema, *case) for name, case in UNENFORCEABLE.items()},
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_bombs_and_unenforceable_schemas_are_refused_before_compiling_naming_why(name: str) -> None:
    error, schema, named = REFUSED[name]
    with pytest.raises(error) as refused:
        check_schema(schema)
    assert named in str(refused.value), str(refused.value)
    assert (
        refused.value.code == {SchemaTooComplex: "schema_too_complex", UnenforceableSchema: "unsupported_schema"}[error]
    )


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


class Address(BaseModel):
    street: str = Field(description="street and number", max_length=80)
    postcode: str = Field(pattern=r"^\d{5}$")


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=0, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool = True


class Person(BaseModel):
    name: str
    born: datetime.date
    email: str | None = None
    colour: Colour
    addresses: list[Address] = Field(max_length=3)
    pet: Cat | Dog = Field(discriminator="kind")
    score: float = Field(gt=0)
    tags: dict[str, int] = {}


REAL_SCHEMAS = {
    "a pydantic model": Person.model_json_schema(),
    "an OpenAI tool": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "the city"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 14},
        },
        "required": ["city"],
        "additionalProperties": False,
    },
    "a nullable enum": {"type": ["string", "null"], "enum": ["a", None]},
    "a recursive tree": {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "value": {"type": "integer"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
            }
        },
        "$ref": "#/$defs/node",
    },
    "a date pattern": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$", "format": "date"},
    "json_object": {"type": "object"},
    "annotations and extensions": {"type": "string", "title": "T", "examples": ["x"], "x-order": 1, "nullable": True},
    "nesting at the limit": nested(SchemaLimits().max_depth - 1),
}


@pytest.mark.parametrize("name", list(REAL_SCHEMAS))
def test_the_schemas_clients_send_pass(name: str) -> None:
    check_schema(REAL_SCHEMAS[name])


def test_limits_are_configurable() -> None:
    check_schema({"enum": list(range(1_001))}, SchemaLimits(max_enum_values=2_000))
    with pytest.raises(SchemaTooComplex, match="at most 3 levels"):
        check_schema(nested(3), SchemaLimits(max_depth=3))


@pytest.mark.parametrize(
    ("pattern", "weight"),
    [
        ("abc", 0),
        (r"^\d{3}-\d{4}$", 7),
        ("a{2}b{3}", 5),
        ("(a{1,30}){1,30}", 900),
        ("((a{10}){10}){10}", 1000),
        ("(ab)*c+", 0),
        ("[{]{3}", 3),
        (r"\{5}", 0),
        ("a{,5}", 0),
        ("x{2,}", 2),
        ("(a|b{4}){2}", 8),
    ],
)
def test_repetition_weight(pattern: str, weight: int) -> None:
    assert repetition_weight(pattern) == weight
