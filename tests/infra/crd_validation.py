"""Validates custom resources against the upstream CRDs vendored under tests/infra/crds/, as an API server would.

Two layers, both from the CRD's `openAPIV3Schema` of the served version:

- the structural schema, with unknown fields as errors (the API server's strict field validation): an object
  schema admits only its `properties` unless it declares `additionalProperties` or
  `x-kubernetes-preserve-unknown-fields`; `x-kubernetes-int-or-string` admits both; `metadata` is held to
  Kubernetes' own ObjectMeta schema (from kubernetes-validate) as the server does.
- the CEL rules (`x-kubernetes-validations`) on every node the object has, run with cel-python. A rule that
  needs the old object (`oldSelf`) only runs on update and is reported as such; a rule the evaluator cannot run
  (a Kubernetes CEL library function it lacks) is reported as skipped by name, never passed silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import yaml
from celpy import celtypes

CRD_DIR = Path(__file__).with_name("crds")
# kubernetes-validate ships the strict JSON schemas per Kubernetes version; ObjectMeta is the same in all we support.
OBJECT_META_VERSION = "1.30.0"


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML 1.1 reads a bare `=` (an enum value in the AlertmanagerConfig CRD) as the `value` tag; it is a string."""


_Loader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


@dataclass(frozen=True)
class CrdVersion:
    group: str
    version: str
    kind: str
    namespaced: bool
    served: bool
    deprecated: bool
    schema: dict[str, Any]
    source: str  # the vendored file, for messages

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


@dataclass(frozen=True)
class SkippedRule:
    path: str
    rule: str
    reason: str


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    rules_run: int = 0
    update_only: list[SkippedRule] = field(default_factory=list)  # need oldSelf: not evaluated on create
    skipped: list[SkippedRule] = field(default_factory=list)  # the evaluator lacks a function the rule uses


@cache
def load_crds() -> dict[tuple[str, str], CrdVersion]:
    """(apiVersion, kind) -> the served version's schema, from every vendored CRD file."""
    out: dict[tuple[str, str], CrdVersion] = {}
    for path in sorted(CRD_DIR.glob("*/*.yaml")):
        doc = yaml.load(path.read_text(), Loader=_Loader)
        if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        for v in spec["versions"]:
            crd = CrdVersion(
                group=spec["group"],
                version=v["name"],
                kind=spec["names"]["kind"],
                namespaced=spec["scope"] == "Namespaced",
                served=bool(v.get("served")),
                deprecated=bool(v.get("deprecated")),
                schema=v["schema"]["openAPIV3Schema"],
                source=str(path.relative_to(CRD_DIR)),
            )
            out[(crd.api_version, crd.kind)] = crd
    return out


def crd_for(manifest: dict[str, Any]) -> CrdVersion | None:
    return load_crds().get((manifest.get("apiVersion", ""), manifest.get("kind", "")))


# -- structural schema -----------------------------------------------------------------------------------------


def structural_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI v3 CRD schema node as JSON Schema in which unknown fields are errors."""
    out: dict[str, Any] = {}
    for key in (
        "type",
        "enum",
        "pattern",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minProperties",
        "maxProperties",
        "required",
        "multipleOf",
    ):
        if key in node:
            out[key] = node[key]
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["type"] = ["integer", "string"]
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    for key in ("allOf", "anyOf", "oneOf"):
        if key in node:
            # In structural schemas these only add value constraints; the fields are declared in `properties`.
            out[key] = [_value_constraints(sub) for sub in node[key]]
    if "not" in node:
        out["not"] = _value_constraints(node["not"])
    if isinstance(node.get("items"), dict):
        out["items"] = structural_json_schema(node["items"])
    if node.get("type") == "object" or "properties" in node:
        props = node.get("properties") or {}
        out["properties"] = {k: structural_json_schema(v) for k, v in props.items()}
        extra = node.get("additionalProperties")
        if node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-embedded-resource") and not props:
            pass  # unknown fields are kept, so they are not errors
        elif isinstance(extra, dict):
            out["additionalProperties"] = structural_json_schema(extra)
        elif extra is True:
            pass
        else:
            out["additionalProperties"] = False
    return out


def _value_constraints(node: dict[str, Any]) -> dict[str, Any]:
    """A junctor branch (anyOf/allOf/oneOf/not) keeps only value validations, as the structural-schema rules say."""
    out = {
        k: v
        for k, v in node.items()
        if k
        in (
            "required",
            "enum",
            "pattern",
            "minLength",
            "maxLength",
            "minimum",
            "maximum",
            "minItems",
            "maxItems",
            "format",
            "type",
        )
    }
    for key in ("allOf", "anyOf", "oneOf"):
        if key in node:
            out[key] = [_value_constraints(s) for s in node[key]]
    if "not" in node:
        out["not"] = _value_constraints(node["not"])
    if isinstance(node.get("properties"), dict):
        out["properties"] = {k: _value_constraints(v) for k, v in node["properties"].items()}
    if isinstance(node.get("items"), dict):
        out["items"] = _value_constraints(node["items"])
    return out


@cache
def _object_meta_validator() -> jsonschema.protocols.Validator:
    schema_dir = (
        Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{OBJECT_META_VERSION}-local-strict"
    )
    schema = json.loads((schema_dir / "objectmeta-meta-v1.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


@cache
def _validator_for(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    crd = load_crds()[(api_version, kind)]
    schema = structural_json_schema(crd.schema)
    schema["properties"]["metadata"] = {"type": "object"}  # checked against ObjectMeta below
    return jsonschema.Draft7Validator(schema)


def with_defaults(schema: dict[str, Any], value: Any) -> Any:
    """The object after the API server's structural defaulting: absent fields take their schema `default`."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        out = {}
        for key, sub in value.items():
            if key in props:
                out[key] = with_defaults(props[key], sub)
            elif isinstance(extra, dict):
                out[key] = with_defaults(extra, sub)
            else:
                out[key] = sub
        for key, sub in props.items():
            if key not in out and "default" in sub:
                out[key] = with_defaults(sub, json.loads(json.dumps(sub["default"])))
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [with_defaults(schema["items"], v) for v in value]
    return value


def _where(path: Any) -> str:
    return "." + ".".join(str(p) for p in path) if path else "(root)"


# -- CEL -------------------------------------------------------------------------------------------------------

_ENV = celpy.Environment()


def _find(text: Any, pattern: Any) -> celtypes.StringType:
    match = re.search(str(pattern), str(text))
    return celtypes.StringType(match.group(0) if match else "")


def _find_all(text: Any, pattern: Any) -> celtypes.ListType:
    return celtypes.ListType([celtypes.StringType(m.group(0)) for m in re.finditer(str(pattern), str(text))])


def _split(text: Any, separator: Any) -> celtypes.ListType:
    return celtypes.ListType([celtypes.StringType(p) for p in str(text).split(str(separator))])


def _join(items: Any, separator: Any = "") -> celtypes.StringType:
    return celtypes.StringType(str(separator).join(str(i) for i in items))


# The few string and regex functions of the Kubernetes CEL environment (cel-go's strings extension and
# k8s.io/apiserver/pkg/cel/library regex) that the CRDs here use and cel-python lacks; the semantics are the
# documented ones. Others (quantity, url, ip, cidr, format, ...) stay missing and their rules are reported skipped.
KUBERNETES_FUNCTIONS: dict[str, Any] = {
    "find": _find,
    "findAll": _find_all,
    "split": _split,
    "join": _join,
    "lowerAscii": lambda text: celtypes.StringType(str(text).lower()),
    "upperAscii": lambda text: celtypes.StringType(str(text).upper()),
    "trim": lambda text: celtypes.StringType(str(text).strip()),
}
_MISSING_FUNCTION = re.compile(r"undeclared reference to '(\w+)'|unbound function (\S+)")


def _missing_function(message: str) -> str | None:
    """The function a CEL error says the evaluator lacks, or None when the error is about the data."""
    match = _MISSING_FUNCTION.search(message)
    if not match:
        return None
    name = next(g for g in match.groups() if g)
    return None if name == "self" else name


def _rules_at(node: dict[str, Any]) -> list[dict[str, Any]]:
    return list(node.get("x-kubernetes-validations") or [])


def _walk(schema: dict[str, Any], value: Any, path: str) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """(path, schema node, value) for every node the value has, the root included."""
    yield path, schema, value
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            if key in props:
                yield from _walk(props[key], sub, f"{path}.{key}")
            elif isinstance(extra, dict):
                yield from _walk(extra, sub, f"{path}[{key!r}]")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from _walk(schema["items"], item, f"{path}[{i}]")


def _cel_value(value: Any) -> Any:
    """JSON to CEL the way the API server binds `self`: objects are maps with field selection, numbers stay ints."""
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        return celtypes.IntType(value)
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, list):
        return celtypes.ListType([_cel_value(v) for v in value])
    if isinstance(value, dict):
        return celtypes.MapType({celtypes.StringType(k): _cel_value(v) for k, v in value.items()})
    return value


def _run_rule(rule: dict[str, Any], value: Any, path: str, report: Report) -> None:
    text = rule["rule"]
    if re.search(r"\boldSelf\b", text):
        report.update_only.append(SkippedRule(path, text, "uses oldSelf: a transition rule, run only on update"))
        return
    try:
        program = _ENV.program(_ENV.compile(text), functions=KUBERNETES_FUNCTIONS)
        result = program.evaluate({"self": _cel_value(value)})
    except Exception as exc:
        result = exc
    if isinstance(result, Exception):
        message = str(result.args[0] if result.args else result)
        missing = _missing_function(message)
        if missing:
            report.skipped.append(SkippedRule(path, text, f"cel-python has no {missing}"))
        else:
            report.rules_run += 1
            report.errors.append(f"{path}: rule {text!r} could not be evaluated: {message[:200]}")
        return
    report.rules_run += 1
    if result is not True and not (isinstance(result, celtypes.BoolType) and bool(result)):
        message = rule.get("message") or rule.get("messageExpression") or f"failed rule: {text}"
        report.errors.append(f"{path}: {message}")


# -- the whole check -------------------------------------------------------------------------------------------


def validate(manifest: dict[str, Any], report: Report | None = None) -> Report:
    """Everything an API server would refuse in `manifest` on create, and the CEL rules it could not run here."""
    report = report if report is not None else Report()
    crd = crd_for(manifest)
    what = f"{manifest.get('kind')} {manifest.get('metadata', {}).get('name')}"
    if crd is None:
        report.errors.append(f"{what}: no vendored CRD serves {manifest.get('apiVersion')} {manifest.get('kind')}")
        return report
    if not crd.served or crd.deprecated:
        report.errors.append(
            f"{what}: {crd.api_version} is {'not served' if not crd.served else 'deprecated'} in {crd.source}"
        )
    namespace = (manifest.get("metadata") or {}).get("namespace")
    if crd.namespaced != bool(namespace):
        report.errors.append(
            f"{what}: {crd.kind} is {'namespaced' if crd.namespaced else 'cluster-scoped'} "
            f"but metadata.namespace is {namespace!r}"
        )
    manifest = with_defaults(crd.schema, manifest)
    for err in _validator_for(crd.api_version, crd.kind).iter_errors(manifest):
        report.errors.append(f"{what} {_where(err.absolute_path)}: {err.message}")
    for err in _object_meta_validator().iter_errors(manifest.get("metadata") or {}):
        report.errors.append(f"{what} .metadata{_where(err.absolute_path)}: {err.message}")
    for path, node, value in _walk(crd.schema, manifest, ""):
        for rule in _rules_at(node):
            _run_rule(rule, value, f"{what} {path or '(root)'}", report)
    return report
