"""Fitting a tool call's arguments to the tool's JSON schema, repairing the slips small models make.

>>> conform_arguments({"labels": "person"}, {"properties": {"labels": {"type": "array"}}})
({'labels': ['person']}, ["labels: 'person' → ['person']"])
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}
_MISSING = object()


def conform_arguments(
    args: Mapping[str, Any], schema: Mapping[str, Any], *, placeholder: str | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Fit a call's arguments to its JSON schema (shallow): ``(arguments, notes)``.

    Small models get the shape nearly right, so unambiguous slips are repaired rather
    than the whole call thrown away; every change is noted:

    - a value of the wrong type is converted when that is unambiguous: a scalar where an
      array is expected → ``[scalar]``; a one-element list where a scalar is expected;
      ``"3"`` → 3; ``"true"`` → True; a number where a string is expected; enum case;
    - an optional argument that still does not fit, or equals ``placeholder``, is dropped;
    - arguments the schema does not list are dropped (when it lists any).

    A required argument that is missing or does not fit raises ``ValueError``.
    """
    props = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    out: dict[str, Any] = {}
    notes: list[str] = []
    for key, value in args.items():
        if placeholder is not None and value == placeholder:
            notes.append(f"dropped {key}={value!r} (the prompt's example placeholder)")
            continue
        if props and key not in props:
            notes.append(f"dropped unknown argument {key}={value!r}")
            continue
        spec = props.get(key)
        if not isinstance(spec, Mapping):
            out[key] = value
            continue
        fitted = _fit(value, spec)
        if fitted is _MISSING:
            if key in required:
                raise ValueError(f"{key}={value!r} does not match {json.dumps(spec, default=str)[:120]}")
            notes.append(f"dropped {key}={value!r} (not {_describe(spec)})")
            continue
        if fitted != value or type(fitted) is not type(value):
            notes.append(f"{key}: {value!r} → {fitted!r}")
        out[key] = fitted
    missing = sorted(required - set(out))
    if missing:
        raise ValueError(f"missing required {missing}")
    return out, notes


def _fit(value: Any, spec: Mapping[str, Any]) -> Any:
    """``value`` as ``spec`` wants it, or ``_MISSING``."""
    if _matches(value, spec):
        return value
    branches = spec.get("anyOf") or spec.get("oneOf")
    if branches:
        for branch in branches:
            if isinstance(branch, Mapping) and (fitted := _fit(value, branch)) is not _MISSING:
                return fitted
        return _MISSING
    if "enum" in spec:
        if isinstance(value, str):
            for option in spec["enum"]:
                if isinstance(option, str) and option.lower() == value.strip().lower():
                    return option
        return _MISSING
    kinds = spec.get("type")
    for kind in [kinds] if isinstance(kinds, str) else list(kinds or ()):
        if kind == "array" and not isinstance(value, list) and value is not None:
            items = spec.get("items")
            item = _fit(value, items) if isinstance(items, Mapping) else value
            if item is not _MISSING:
                return [item]
        elif isinstance(value, list) and len(value) == 1 and kind != "array":
            one = _fit(value[0], {**spec})
            if one is not _MISSING:
                return one
        elif kind in ("integer", "number") and isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                continue
            if kind == "number":
                return number
            if number.is_integer():
                return int(number)
        elif kind == "integer" and isinstance(value, float) and value.is_integer():
            return int(value)
        elif kind == "boolean" and isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        elif kind == "string" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    return _MISSING


def _describe(spec: Mapping[str, Any]) -> str:
    if "enum" in spec:
        return f"one of {spec['enum']}"
    branches = spec.get("anyOf") or spec.get("oneOf")
    if branches:
        return " or ".join(_describe(b) for b in branches if isinstance(b, Mapping))
    kinds = spec.get("type")
    return "/".join(kinds) if isinstance(kinds, list) else str(kinds or "any")


def _matches(value: Any, spec: Mapping[str, Any]) -> bool:
    branches = spec.get("anyOf") or spec.get("oneOf")
    if branches:
        return any(_matches(value, b) for b in branches if isinstance(b, Mapping))
    if "enum" in spec and value not in spec["enum"]:
        return False
    kinds = spec.get("type")
    if kinds is None:
        return True
    for kind in [kinds] if isinstance(kinds, str) else list(kinds):
        types = _JSON_TYPES.get(kind)
        if types is None:
            return True
        if isinstance(value, bool) and kind in ("integer", "number"):
            continue
        if isinstance(value, types):
            return True
    return False
