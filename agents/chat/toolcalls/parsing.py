"""A model's generated text → content, tool calls and invalid tool calls (formats: see the package).

>>> parse_tool_calls('<tool_call>{"name": "count", "arguments": {"label": "dog"}}</tool_call>').tool_calls
[{'name': 'count', 'args': {'label': 'dog'}, 'id': 'call_0', 'type': 'tool_call'}]
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.messages.tool import invalid_tool_call, tool_call

from agents.chat.toolcalls.arguments import conform_arguments
from agents.chat.toolcalls.json_text import json_values, load_json, strip_fence, widen_to_fence
from agents.chat.toolcalls.protocol import TOOL_CALL_CLOSE, TOOL_CALL_OPEN


@dataclass
class ParsedReply:
    """What :func:`parse_tool_calls` found in a model's text."""

    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    invalid_tool_calls: list[dict[str, Any]] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)  # what was changed to fit the tools' schemas


_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|\Z)", re.S)


class _BadCall(ValueError):
    pass


def parse_tool_calls(
    text: str,
    *,
    tools: Iterable[str] | Iterable[Mapping[str, Any]] | None = None,
    first_id: int = 0,
    id_prefix: str = "call_",
    placeholder: str | None = None,
) -> ParsedReply:
    """Split generated ``text`` into content and tool calls (formats: see the module docstring).

    ``tools``, when given, are the registered tools — names, or OpenAI tool dicts whose
    arguments are then fitted to their schemas (:func:`conform_arguments`; what changed
    is listed in ``repairs``). A call to any other name, or whose arguments cannot be
    fitted, is invalid: it stays in the content and is listed in ``invalid_tool_calls``.
    An argument equal to ``placeholder`` (the prompt example's :data:`PLACEHOLDER`,
    copied) counts as not given. Ids are ``f"{id_prefix}{first_id + i}"`` in order.
    """
    schemas = _schemas(tools)
    calls: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []
    repairs: list[str] = []
    counter = [first_id]

    def next_id() -> str:
        counter[0] += 1
        return f"{id_prefix}{counter[0] - 1}"

    def accept(raw: str, objs: Any) -> bool:
        """Add the calls in ``objs``; False (and one invalid call) if any of them is bad."""
        try:
            items = objs if isinstance(objs, list) else [objs]
            parsed = [_normalize_call(o, schemas, placeholder) for o in items]
        except _BadCall as exc:
            guess = objs[0] if isinstance(objs, list) and objs else objs
            name = guess.get("name") if isinstance(guess, dict) and isinstance(guess.get("name"), str) else None
            invalid.append(invalid_tool_call(name=name, args=raw.strip(), id=next_id(), error=str(exc)))
            return False
        for name, args, notes in parsed:
            calls.append(tool_call(name=name, args=args, id=next_id()))
            repairs.extend(f"{calls[-1]['id']} {name}: {n}" for n in notes)
        return True

    if TOOL_CALL_OPEN in text:
        kept: list[str] = []
        pos = 0
        for m in _BLOCK.finditer(text):
            kept.append(text[pos : m.start()])
            pos = m.end()
            body = strip_fence(m.group(1).strip())
            if not body:  # "<tool_call></tool_call>" mentioned in prose
                kept.append(m.group(0))
                continue
            try:
                objs = load_json(body)
            except ValueError as exc:
                invalid.append(invalid_tool_call(name=None, args=body, id=next_id(), error=f"not JSON: {exc}"))
                kept.append(m.group(0))
                continue
            if objs == []:  # "no call needed", in SmolLM2's own format
                continue
            if not accept(body, objs):
                kept.append(m.group(0))
        kept.append(text[pos:])
        return ParsedReply(_tidy("".join(kept)), calls, invalid, repairs)

    # No tags: bare JSON calls anywhere in the reply, each possibly in its own ```json fence
    # (Qwen2.5-Coder writes them that way). A fence around an accepted call goes with it.
    kept = []
    pos = 0
    for start, end, objs in json_values(text):
        if not _looks_like_call(objs):
            continue
        if accept(text[start:end], objs):
            start, end = widen_to_fence(text, start, end)
            kept.append(text[pos:start])
            pos = end
    kept.append(text[pos:])
    return ParsedReply(_tidy("".join(kept)), calls, invalid, repairs)


def _schemas(tools: Iterable[Any] | None) -> dict[str, dict[str, Any]] | None:
    """name → parameters schema ({} when only names are known); None: accept any name."""
    if tools is None:
        return None
    out: dict[str, dict[str, Any]] = {}
    for t in tools:
        if isinstance(t, str):
            out[t] = {}
        else:
            fn = t.get("function", t)
            out[fn["name"]] = dict(fn.get("parameters") or {})
    return out


def _normalize_call(
    obj: Any, schemas: dict[str, dict[str, Any]] | None, placeholder: str | None = None
) -> tuple[str, dict[str, Any], list[str]]:
    if not isinstance(obj, dict):
        raise _BadCall(f"a tool call must be a JSON object, got {type(obj).__name__}")
    if isinstance(obj.get("function"), dict):  # OpenAI shape
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _BadCall('a tool call needs a "name" string')
    name = name.strip()
    args = next((obj[k] for k in ("arguments", "parameters", "args") if k in obj), {})
    if args is None:
        args = {}
    if isinstance(args, str):
        try:
            args = load_json(args) if args.strip() else {}
        except ValueError as exc:
            raise _BadCall(f"arguments of {name!r} are not JSON: {exc}") from exc
    if not isinstance(args, dict):
        raise _BadCall(f"arguments of {name!r} must be a JSON object, got {type(args).__name__}")
    if schemas is not None and name not in schemas:
        raise _BadCall(f"unknown tool {name!r}; registered tools: {sorted(schemas)}")
    schema = schemas[name] if schemas is not None else {}
    try:
        args, notes = conform_arguments(args, schema, placeholder=placeholder)
    except ValueError as exc:
        raise _BadCall(f"arguments of {name!r}: {exc}") from exc
    return name, args, notes


def _looks_like_call(value: Any) -> bool:
    def one(v: Any) -> bool:
        if not isinstance(v, dict):
            return False
        if isinstance(v.get("function"), dict):
            v = v["function"]
        return "name" in v and any(k in v for k in ("arguments", "parameters"))

    if isinstance(value, list):
        return bool(value) and all(one(v) for v in value)
    return one(value)


def _tidy(text: str) -> str:
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def parse_reply(
    reply: str,
    tools: Sequence[Mapping[str, Any]] | None,
    history: Sequence[BaseMessage],
    *,
    placeholder: str | None = None,
) -> ParsedReply:
    """A local model's generated ``reply`` → content and tool calls, as one chat turn.

    Ids continue the numbering of the calls already in ``history``. When the reply holds
    tagged calls, text after the last ``</tool_call>`` is dropped: it is the model
    imagining the results. A call repeated verbatim in the same reply counts once.
    """
    first_id = sum(len(getattr(m, "tool_calls", None) or []) for m in history)
    opts: dict[str, Any] = {"tools": list(tools or []), "first_id": first_id, "placeholder": placeholder}
    parsed = parse_tool_calls(reply, **opts)
    if parsed.tool_calls and TOOL_CALL_CLOSE in reply:
        end = reply.rindex(TOOL_CALL_CLOSE) + len(TOOL_CALL_CLOSE)
        if reply[end:].strip():
            parsed = parse_tool_calls(reply[:end], **opts)
    # The same call written twice in one reply (small models stutter) is one call.
    seen: set[str] = set()
    unique = []
    for call in parsed.tool_calls:
        key = json.dumps([call["name"], call["args"]], sort_keys=True, default=str)
        if key in seen:
            parsed.repairs.append(f"{call['id']} {call['name']}: dropped, a repeat of an earlier call in this reply")
        else:
            seen.add(key)
            unique.append(call)
    parsed.tool_calls = unique
    return parsed
