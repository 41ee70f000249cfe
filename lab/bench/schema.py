"""A small JSON Schema validator for the subset the report schema uses.

Supported keywords: type (a name or a list of names), properties, required,
additionalProperties (a boolean or a schema), items, enum, const, minimum, maximum,
minItems, maxItems, anyOf, $ref (to "#/$defs/<name>"), and description/title (ignored).
Unknown keywords are an error in the schema itself, so the schema cannot silently promise
a check this validator does not make.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("report_schema.json")

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}
_KNOWN = {
    "type", "properties", "required", "additionalProperties", "items", "enum", "const",
    "minimum", "maximum", "minItems", "maxItems", "anyOf", "$ref", "description", "title",
    "$schema", "$id", "$defs", "examples",
}  # fmt: skip


@cache
def report_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def _is_type(value: Any, name: str) -> bool:
    if name not in _TYPES:
        raise ValueError(f"schema uses unknown type {name!r}")
    if isinstance(value, bool) and name in ("integer", "number"):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    if name == "number" and isinstance(value, float) and not math.isfinite(value):
        return False  # JSON has no NaN or Infinity
    return isinstance(value, _TYPES[name])


def validate(value: Any, schema: Mapping[str, Any] | None = None) -> list[str]:
    """Every way `value` breaks `schema` (the report schema by default), as `path: problem`."""
    root = dict(schema) if schema is not None else report_schema()
    errors: list[str] = []
    _check(value, root, root, "$", errors)
    return errors


def _resolve(ref: str, root: Mapping[str, Any]) -> Mapping[str, Any]:
    prefix = "#/$defs/"
    if not ref.startswith(prefix) or ref[len(prefix) :] not in root.get("$defs", {}):
        raise ValueError(f"schema has an unresolvable $ref {ref!r}")
    return root["$defs"][ref[len(prefix) :]]


def _check(
    value: Any, schema: Mapping[str, Any], root: Mapping[str, Any], path: str, errors: list[str]
) -> None:
    unknown = set(schema) - _KNOWN
    if unknown:
        raise ValueError(f"schema at {path} uses unsupported keywords {sorted(unknown)}")
    if "$ref" in schema:
        _check(value, _resolve(schema["$ref"], root), root, path, errors)
    if "anyOf" in schema:
        options = []
        for option in schema["anyOf"]:
            found: list[str] = []
            _check(value, option, root, path, found)
            if not found:
                break
            options.append(found)
        else:
            errors.append(f"{path}: matches none of the allowed forms ({options[0][0]})")
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(value, n) for n in names):
            errors.append(f"{path}: expected {' or '.join(names)}, got {_describe(value)}")
            return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: expected {schema['const']!r}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} is above the maximum {schema['maximum']}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing required key {key!r}")
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            where = f"{path}.{key}"
            if key in properties:
                _check(item, properties[key], root, where, errors)
            elif extra is False:
                errors.append(f"{path}: unexpected key {key!r}")
            elif isinstance(extra, Mapping):
                _check(item, extra, root, where, errors)
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                _check(item, schema["items"], root, f"{path}[{i}]", errors)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return type(value).__name__
