"""What a JSON Schema must be before it is compiled into a grammar: small enough, and enforceable as written.

`check_schema` walks a schema once, in pure Python and without compiling anything, and raises

- `SchemaTooComplex` (`schema_too_complex`) when the schema is over one of `SchemaLimits`: its size, its nesting, an
  enum, a pattern, a counted repetition inside a pattern. These are the shapes that make xgrammar's compile take
  seconds to minutes (measured with the embedded model's 49,152-token vocabulary: `a{1,10000}` 47 s, an enum of
  10,000 strings 4 s and 40 MB, `(a{1,100}){1,100}` 2 s);
- `UnenforceableSchema` (`unsupported_schema`) when xgrammar would quietly drop a constraint and let any JSON through
  in its place: `not`, `if`/`then`/`else`, a `$ref` that leaves the schema, an `allOf` of several schemas,
  keywords beside `$ref`/`enum`/`const`/`anyOf` (xgrammar reads only the first of these it finds), type-specific
  keywords without a `type`, `uniqueItems`, `contains`, `propertyNames`, the `dependent*` family, a `format` it
  does not know, a lookaround in a `pattern`, `multipleOf` on non-integers or above 1024, a `required` name that
  `properties` does not define. Each of these was checked against xgrammar 0.2.8: the grammar it compiles accepts
  output the schema forbids.

The message names the keyword and where it is, as a JSON pointer (`#/properties/age/multipleOf`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# Keywords that only describe (JSON Schema's annotations, OpenAPI's extras): they constrain nothing, so a grammar
# that ignores them drops nothing. Keywords that JSON Schema does not define are annotations too.
ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "$schema",
        "$id",
        "$anchor",
        "$dynamicAnchor",
        "$vocabulary",
        "$defs",
        "definitions",
        "deprecated",
        "readOnly",
        "writeOnly",
        "contentEncoding",
        "contentMediaType",
        "contentSchema",
        "discriminator",
        "nullable",
        "example",
        "externalDocs",
        "xml",
    }
)
STRING_KEYWORDS = ("minLength", "maxLength", "pattern", "format")
NUMBER_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
# Counts xgrammar enforces only with a `type` (without one the schema compiles to any JSON).
ARRAY_COUNTS = ("minItems", "maxItems")
OBJECT_COUNTS = ("minProperties", "maxProperties")
# Object and array structure, which xgrammar enforces with or without a `type` (it infers the type from them).
STRUCTURE = ("properties", "required", "additionalProperties", "patternProperties", "items", "prefixItems")
COUNT_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
TYPE_OF: dict[str, str] = {
    **{k: "string" for k in STRING_KEYWORDS},
    **{k: "number" for k in NUMBER_KEYWORDS},
    **{k: "array" for k in ARRAY_COUNTS},
    **{k: "object" for k in OBJECT_COUNTS},
}
# xgrammar reads the first of these a schema has and ignores every other constraint beside it.
EXCLUSIVE = ("$ref", "const", "enum", "anyOf", "oneOf", "allOf")
# Constraints xgrammar drops, and why that matters to the client.
DROPPED: dict[str, str] = {
    "not": "the grammar cannot exclude a schema",
    "if": "conditional schemas are not enforced",
    "then": "conditional schemas are not enforced",
    "else": "conditional schemas are not enforced",
    "contains": "the grammar cannot require an item to match",
    "minContains": "the grammar cannot count matching items",
    "maxContains": "the grammar cannot count matching items",
    "propertyNames": "property names are not constrained by the grammar",
    "dependentRequired": "dependencies between properties are not enforced",
    "dependentSchemas": "dependencies between properties are not enforced",
    "dependencies": "dependencies between properties are not enforced",
    "$dynamicRef": "dynamic references are not resolved",
    "$recursiveRef": "dynamic references are not resolved",
}
# Keywords xgrammar drops only in some forms: a boolean is harmless (the grammar is then as strict or stricter).
BOOLEAN_ONLY = ("unevaluatedProperties", "unevaluatedItems", "additionalItems")
# The string formats xgrammar 0.2.8 compiles into the grammar; any other value is silently ignored.
FORMATS = frozenset(
    {
        "email",
        "date-time",
        "date",
        "time",
        "duration",
        "uuid",
        "ipv4",
        "ipv6",
        "hostname",
        "uri",
        "uri-reference",
        "uri-template",
        "json-pointer",
        "relative-json-pointer",
    }
)
MAX_MULTIPLE_OF = 1024  # xgrammar builds a remainder automaton up to this divisor, and ignores larger ones
JSON_TYPES = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
    "array": (list,),
    "object": (dict,),
}


class SchemaRefused(ValueError):
    """A schema refused before compiling; `code` is the API error code."""

    code = "invalid_schema"


class SchemaTooComplex(SchemaRefused):
    """Over one of the limits (or the compile budget); the message names the limit."""

    code = "schema_too_complex"


class UnenforceableSchema(SchemaRefused):
    """The grammar would drop a constraint of this schema; the message names the keyword and where it is."""

    code = "unsupported_schema"


@dataclass(frozen=True)
class SchemaLimits:
    """Bounds on a schema before it is compiled. docs/api/limits.md states them for clients."""

    max_chars: int = 131_072  # the schema as compact JSON
    max_subschemas: int = 2_000
    max_depth: int = 32  # subschemas inside subschemas
    max_enum_values: int = 1_000  # values of one enum
    max_enum_chars: int = 32_768  # all enum and const values of the schema together, as JSON
    max_pattern_chars: int = 1_000  # one pattern (or patternProperties key)
    # The largest count of a counted repetition in a pattern, multiplied by those that enclose it and summed over the
    # pattern: `(a{1,30}){1,30}` counts 900, `\d{3}-\d{4}` counts 7.
    max_repetition: int = 1_000
    max_count: int = 100_000  # minLength, maxItems and the other count keywords


def schema_text(schema: Any) -> str:
    """The schema as compact JSON, key order kept (xgrammar generates properties in that order): what is compiled."""
    return json.dumps(schema, ensure_ascii=False, separators=(",", ":"))


def schema_key(text: str) -> str:
    """The cache key of a schema's compact JSON."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def check_schema(schema: Any, limits: SchemaLimits = SchemaLimits(), text: str | None = None) -> None:
    """Raise SchemaTooComplex or UnenforceableSchema for the first problem found; `text` is schema_text(schema)."""
    text = schema_text(schema) if text is None else text
    if len(text) > limits.max_chars:
        raise SchemaTooComplex(f"the schema is {len(text)} characters as JSON; at most {limits.max_chars} are allowed")
    _Walk(limits).run(schema)


def _pointer(parts: tuple[str, ...]) -> str:
    return "#" + "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def _types(node: dict[str, Any]) -> set[str] | None:
    declared = node.get("type")
    if declared is None:
        return None
    if isinstance(declared, str):
        return {declared}
    return {t for t in declared if isinstance(t, str)} if isinstance(declared, list) else set()


def _is_type(value: Any, name: str) -> bool:
    if isinstance(value, bool) and name in ("integer", "number"):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, JSON_TYPES.get(name, ()))


class _Walk:
    def __init__(self, limits: SchemaLimits) -> None:
        self.limits = limits
        self.subschemas = 0
        self.enum_chars = 0

    def run(self, root: Any) -> None:
        stack: list[tuple[Any, tuple[str, ...], int]] = [(root, (), 1)]
        while stack:
            node, where, depth = stack.pop()
            self.subschemas += 1
            if self.subschemas > self.limits.max_subschemas:
                raise SchemaTooComplex(f"the schema has more than {self.limits.max_subschemas} subschemas, the limit")
            if depth > self.limits.max_depth:
                raise SchemaTooComplex(
                    f"the schema nests subschemas {depth} deep at {_pointer(where)}; at most {self.limits.max_depth} "
                    "levels are allowed"
                )
            if isinstance(node, dict):
                self.check_node(node, where)
                stack.extend((child, where + path, depth + 1) for child, path in _children(node))

    def check_node(self, node: dict[str, Any], where: tuple[str, ...]) -> None:
        def at(*keys: str) -> str:
            return _pointer(where + keys)

        for keyword, why in DROPPED.items():
            if keyword in node:
                raise UnenforceableSchema(f"'{keyword}' at {at(keyword)} is not enforced: {why}")
        for keyword in BOOLEAN_ONLY:
            if keyword in node and not isinstance(node[keyword], bool):
                raise UnenforceableSchema(
                    f"'{keyword}' at {at(keyword)} is enforced only as true or false, not as a schema"
                )
        if node.get("uniqueItems") not in (None, False):
            raise UnenforceableSchema(
                f"'uniqueItems' at {at('uniqueItems')} is not enforced: the grammar cannot compare items"
            )
        self.check_exclusive(node, at)
        self.check_typed(node, at)
        if "$ref" in node:
            ref = node["$ref"]
            if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
                raise UnenforceableSchema(
                    f"'$ref' at {at('$ref')} is {ref!r}: only references inside the schema ('#' or '#/...') are "
                    "resolved, never a URL, a file or an anchor"
                )
        if "allOf" in node and (not isinstance(node["allOf"], list) or len(node["allOf"]) != 1):
            count = len(node["allOf"]) if isinstance(node["allOf"], list) else "no"
            raise UnenforceableSchema(
                f"'allOf' at {at('allOf')} has {count} schemas: the grammar enforces an allOf of exactly one; merge "
                "them into one schema"
            )
        for keyword in ("anyOf", "oneOf"):
            if keyword in node and (not isinstance(node[keyword], list) or not node[keyword]):
                raise UnenforceableSchema(f"'{keyword}' at {at(keyword)} must be a non-empty list of schemas")
        if node.get("type") == []:
            raise UnenforceableSchema(f"'type' at {at('type')} is an empty list: no value could match it")
        for keyword in ("enum", "const"):
            if keyword in node:
                self.check_values(node, keyword, at)
        for keyword in COUNT_KEYWORDS:
            value = node.get(keyword)
            if isinstance(value, int) and not isinstance(value, bool) and value > self.limits.max_count:
                raise SchemaTooComplex(
                    f"'{keyword}' at {at(keyword)} is {value}; at most {self.limits.max_count} is allowed"
                )
        self.check_format_and_numbers(node, at)
        required = node.get("required")
        if isinstance(required, list):
            properties = node.get("properties")
            defined: dict[str, Any] = properties if isinstance(properties, dict) else {}
            missing = [name for name in required if name not in defined]
            if missing:
                raise UnenforceableSchema(
                    f"'required' at {at('required')} names {missing[0]!r}, which 'properties' does not define: the "
                    "grammar enforces only required properties it has a schema for"
                )
        if isinstance(node.get("pattern"), str):
            self.check_pattern(node["pattern"], at("pattern"))
        if isinstance(node.get("patternProperties"), dict):
            for key in node["patternProperties"]:
                self.check_pattern(key, at("patternProperties", key))

    def check_exclusive(self, node: dict[str, Any], at: Callable[..., str]) -> None:
        present = [k for k in EXCLUSIVE if k in node]
        if not present:
            return
        first = present[0]
        # Beside enum or const, a type is redundant when every value has it (check_values holds them to it).
        allowed = {first, "type"} if first in ("enum", "const") else {first}
        others = [k for k in node if k not in allowed and k not in ANNOTATIONS and _constrains(k)]
        if others:
            raise UnenforceableSchema(
                f"'{others[0]}' at {at(others[0])} sits beside '{first}', and the grammar enforces only '{first}' "
                f"there; move '{others[0]}' into the schema that '{first}' leads to"
            )

    def check_typed(self, node: dict[str, Any], at: Callable[..., str]) -> None:
        if any(k in node for k in EXCLUSIVE):
            return
        types = _types(node)
        for keyword, kind in TYPE_OF.items():
            if keyword in node and types is None:
                raise UnenforceableSchema(
                    f"'{keyword}' at {at(keyword)} constrains {kind}s, but the schema declares no 'type': the grammar "
                    f"would let any JSON through; add \"type\": \"{'integer' if kind == 'number' else kind}\""
                )

    def check_values(self, node: dict[str, Any], keyword: str, at: Callable[..., str]) -> None:
        values = node[keyword] if keyword == "enum" else [node[keyword]]
        if keyword == "enum" and isinstance(values, list) and len(values) > self.limits.max_enum_values:
            raise SchemaTooComplex(
                f"the enum at {at('enum')} has {len(values)} values; at most {self.limits.max_enum_values} are allowed per enum"
            )
        self.enum_chars += len(json.dumps(node[keyword], ensure_ascii=False, separators=(",", ":")))
        if self.enum_chars > self.limits.max_enum_chars:
            raise SchemaTooComplex(
                f"the enum and const values reach {at(keyword)} with more than {self.limits.max_enum_chars} characters "
                "of JSON; that is the limit for the whole schema"
            )
        types = _types(node)
        if types and isinstance(values, list):
            for value in values:
                if not any(_is_type(value, t) for t in types):
                    raise UnenforceableSchema(
                        f"'{keyword}' at {at(keyword)} holds {json.dumps(value)[:40]}, which is not of the declared type "
                        f"{'/'.join(sorted(types))}: the grammar would generate it anyway"
                    )

    def check_format_and_numbers(self, node: dict[str, Any], at: Callable[..., str]) -> None:
        types = _types(node) or set()
        fmt = node.get("format")
        if fmt is not None and "string" in types and fmt not in FORMATS:
            raise UnenforceableSchema(
                f"'format' at {at('format')} is {fmt!r}, which the grammar does not enforce; enforced formats: "
                f"{', '.join(sorted(FORMATS))}"
            )
        if "multipleOf" in node and types & {"integer", "number"}:
            value = node["multipleOf"]
            if types != {"integer"} or not isinstance(value, int) or isinstance(value, bool) or value > MAX_MULTIPLE_OF:
                raise UnenforceableSchema(
                    f"'multipleOf' at {at('multipleOf')} is enforced only on \"type\": \"integer\" with a whole divisor "
                    f"up to {MAX_MULTIPLE_OF}"
                )

    def check_pattern(self, pattern: str, where: str) -> None:
        if len(pattern) > self.limits.max_pattern_chars:
            raise SchemaTooComplex(
                f"the pattern at {where} is {len(pattern)} characters; at most {self.limits.max_pattern_chars} are allowed"
            )
        for look in ("(?=", "(?!", "(?<=", "(?<!"):
            if look in pattern:
                raise UnenforceableSchema(
                    f"the pattern at {where} uses a lookaround {look}...), which the grammar does not enforce"
                )
        weight = repetition_weight(pattern)
        if weight > self.limits.max_repetition:
            raise SchemaTooComplex(
                f"the pattern at {where} repeats {weight} times through its counted repetitions ({{m,n}}, multiplied "
                f"where they nest); at most {self.limits.max_repetition} are allowed"
            )


def _constrains(keyword: str) -> bool:
    """Whether a keyword is a JSON Schema constraint (any keyword JSON Schema does not define is an annotation)."""
    return keyword in CONSTRAINTS


CONSTRAINTS = frozenset(
    {
        "type",
        "enum",
        "const",
        "$ref",
        "anyOf",
        "oneOf",
        "allOf",
        *STRING_KEYWORDS,
        *NUMBER_KEYWORDS,
        *ARRAY_COUNTS,
        *OBJECT_COUNTS,
        *STRUCTURE,
        "uniqueItems",
        *BOOLEAN_ONLY,
        *DROPPED,
    }
)


def _children(node: dict[str, Any]) -> Iterator[tuple[Any, tuple[str, ...]]]:
    """The subschemas of a schema object, with their path below it."""
    for keyword in ("properties", "patternProperties", "$defs", "definitions"):
        value = node.get(keyword)
        if isinstance(value, dict):
            for name, child in value.items():
                yield child, (keyword, str(name))
    for keyword in ("items", "additionalProperties"):
        if keyword in node:
            yield node[keyword], (keyword,)
    for keyword in ("prefixItems", "anyOf", "oneOf", "allOf"):
        value = node.get(keyword)
        if isinstance(value, list):
            for i, child in enumerate(value):
                yield child, (keyword, str(i))


def repetition_weight(pattern: str) -> int:
    """The sum, over the counted repetitions of a regular expression, of each count times the counts enclosing it.

    Unbounded `*`/`+` compile to a loop and cost nothing here; `{m,n}` is unrolled by the compiler, so its cost
    multiplies through nesting: `(a{1,30}){1,30}` weighs 900, `a{2}b{3}` 5.
    """
    # One frame per open group: the weight summed inside it so far. Each atom's weight is kept until its quantifier
    # (if any) is read: a literal weighs 0, a group what its inside weighs.
    frames: list[int] = [0]
    last = 0  # the weight of the atom just read, before its quantifier
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 2
            last = 0
            continue
        if c == "[":
            i = _class_end(pattern, i)
            last = 0
            continue
        if c == "(":
            frames[-1] += last
            frames.append(0)
            last = 0
            i += 1
            continue
        if c == ")" and len(frames) > 1:
            inside = frames.pop() + last
            last = inside
            i += 1
            continue
        if c == "{":
            count, end = _counted(pattern, i)
            if count is not None:
                last = max(last, 1) * count
                i = end
                continue
        frames[-1] += last
        last = 0
        i += 1
    while len(frames) > 1:  # an unclosed group: the compiler will refuse it; weigh what was read
        last += frames.pop()
    return frames[0] + last


def _class_end(pattern: str, start: int) -> int:
    """The index after the character class that opens at `start`."""
    i = start + 1
    if i < len(pattern) and pattern[i] == "^":
        i += 1
    if i < len(pattern) and pattern[i] == "]":
        i += 1
    while i < len(pattern) and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return i + 1


def _counted(pattern: str, start: int) -> tuple[int | None, int]:
    """`{n}`, `{n,}` or `{m,n}` at `start`: its largest count and the index after it; (None, start) if not one."""
    end = pattern.find("}", start)
    if end < 0:
        return None, start
    body = pattern[start + 1 : end]
    parts = body.split(",")
    if (
        len(parts) > 2
        or not parts[0].strip().isdigit()
        or (len(parts) == 2 and parts[1].strip() and not parts[1].strip().isdigit())
    ):
        return None, start
    numbers = [int(p) for p in parts if p.strip()]
    return max(numbers), end + 1
