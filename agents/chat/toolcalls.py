"""Tool calling for models whose only interface is text: message conversion, the tool prompt, parsing.

A local causal LM sees a conversation through its tokenizer's chat template. This
module turns LangChain messages into the dicts that template expects, and turns the
generated text back into tool calls.

**Native format** (:func:`to_chat_dicts`), the one transformers documents for
``apply_chat_template(..., tools=...)``::

    {"role": "system", "content": "..."}
    {"role": "user", "content": "..."}
    {"role": "assistant", "content": "",
     "tool_calls": [{"id": "call_0", "type": "function",
                     "function": {"name": "detect_objects", "arguments": {"label": "person"}}}]}
    {"role": "tool", "content": "...", "name": "detect_objects", "tool_call_id": "call_0"}

**Prompt format** (:func:`to_prompt_dicts`), for templates that silently ignore
``tools`` (SmolLM2's does: it only prints ``role`` and ``content``). Everything becomes
plain text in the roles every template knows, in the Hermes / Qwen2.5 convention:

- the tools' JSON schemas and the calling instructions (:data:`DEFAULT_TOOL_PROMPT`)
  are appended to the system message (or become one);
- an assistant's tool calls become ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
  lines, exactly what the prompt asks the model to write;
- tool results become one user message of ``<tool_response>...</tool_response>`` blocks
  (consecutive results are merged, in call order).

**Parsing** (:func:`parse_tool_calls`) accepts what models actually write:
``<tool_call>`` blocks holding one JSON object or a JSON list of them (SmolLM2's own
format), an unterminated last block (generation stopped), bare JSON objects with
``name`` and ``arguments`` (or ``parameters``) anywhere in the reply, JSON lists of
those, ```` ```json ```` fences around either (Qwen2.5-Coder writes its calls so),
OpenAI-shaped ``{"function": {...}}`` objects and stringified arguments. Arguments are
fitted to the tool's schema (:func:`conform_arguments`: ``"person"`` where a list is
expected becomes ``["person"]``, junk in an optional argument is dropped, each change
noted). Anything that does not parse, names a tool that is not registered, or lacks a
required argument stays in the content and is also reported as an
``invalid_tool_call``. Tool-call ids are deterministic: ``call_0``, ``call_1``, …
numbered across the whole conversation.

>>> parse_tool_calls('<tool_call>{"name": "count", "arguments": {"label": "dog"}}</tool_call>').tool_calls
[{'name': 'count', 'args': {'label': 'dog'}, 'id': 'call_0', 'type': 'tool_call'}]
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call

from experts.errors import ConfigError

#: Appended to the system message when the chat template cannot render ``tools``.
#: Plain text (no ``str.format`` escaping): ``{tools}`` becomes one JSON function schema
#: per line, ``{example}`` a call of the first tool with ``"..."`` for every argument.
#: The wording is Hermes / Qwen2.5's, which most open instruct models have seen.
#: Measured on SmolLM2-135M-Instruct (greedy, 8 image questions, reply pre-filled with
#: ``<tool_call>``): listing bare function schemas rather than ``{"type": "function", ...}``
#: wrappers stops it from copying the schema into the arguments, and the example with the
#: real tool name is what makes the call parse (7/8, vs 0/8 with a generic ``get_weather``
#: example, which it copies verbatim).
DEFAULT_TOOL_PROMPT = (
    "# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n"
    '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>\n\n'
    "For example:\n<tool_call>\n{example}\n</tool_call>"
)

#: The argument value in the prompt's example call. An argument with this value is the
#: model copying the example (SmolLM2-135M does): it counts as not given.
PLACEHOLDER = "..."

#: Added after the tool prompt when the caller forces a tool call (``tool_choice``).
FORCED_TOOL_INSTRUCTION = "You must call {which} now. Answer only with the <tool_call> block."

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>", "</tool_response>"


# --------------------------------------------------------------------------- messages → dicts


def message_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a content-block list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, Mapping) and block.get("type") in ("text", None) and "text" in block:
                parts.append(str(block["text"]))
        return "\n".join(parts)
    if isinstance(content, (dict, tuple)):
        return json.dumps(content, ensure_ascii=False, default=str)
    return str(content)


def to_chat_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages → the native chat-template dicts (see the module docstring).

    A tool message without a ``name`` gets it from the assistant tool call it answers.
    """
    names_by_id: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for msg in messages:
        if isinstance(msg, SystemMessage):
            out.append({"role": "system", "content": message_text(msg.content)})
        elif isinstance(msg, HumanMessage):
            out.append({"role": "user", "content": message_text(msg.content)})
        elif isinstance(msg, AIMessage):
            item: dict[str, Any] = {"role": "assistant", "content": message_text(msg.content)}
            if msg.tool_calls:
                item["tool_calls"] = []
                for call in msg.tool_calls:
                    if call.get("id"):
                        names_by_id[call["id"]] = call["name"]
                    item["tool_calls"].append(
                        {
                            "id": call.get("id") or "",
                            "type": "function",
                            "function": {"name": call["name"], "arguments": dict(call.get("args") or {})},
                        }
                    )
            out.append(item)
        elif isinstance(msg, ToolMessage):
            out.append(
                {
                    "role": "tool",
                    "content": message_text(msg.content),
                    "name": msg.name or names_by_id.get(msg.tool_call_id, ""),
                    "tool_call_id": msg.tool_call_id,
                }
            )
        elif isinstance(msg, FunctionMessage):
            out.append({"role": "tool", "content": message_text(msg.content), "name": msg.name, "tool_call_id": ""})
        elif isinstance(msg, ChatMessage):
            out.append({"role": msg.role, "content": message_text(msg.content)})
        else:
            raise TypeError(f"cannot render a {type(msg).__name__} in a chat template")
    return out


def format_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """One call in the prompt format: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``."""
    body = json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def render_tool_prompt(
    tools: Sequence[Mapping[str, Any]], *, template: str = DEFAULT_TOOL_PROMPT, forced: str | None = None
) -> str:
    """The system-prompt text listing ``tools`` (OpenAI tool dicts) and how to call them.

    ``template`` may use ``{tools}`` and ``{example}`` (see :data:`DEFAULT_TOOL_PROMPT`).
    ``forced`` is ``"any"`` or a tool name when the caller requires a call.
    """
    functions = [dict(t.get("function", t)) for t in tools]
    lines = "\n".join(json.dumps(f, ensure_ascii=False) for f in functions)
    first = functions[0] if functions else {"name": "function_name", "parameters": {}}
    params = (first.get("parameters") or {}).get("properties") or {}
    example = json.dumps({"name": first["name"], "arguments": dict.fromkeys(params, PLACEHOLDER)}, ensure_ascii=False)
    text = template.replace("{tools}", lines).replace("{example}", example)
    if forced:
        which = "one of the functions" if forced == "any" else f"the function {forced!r}"
        text += "\n\n" + FORCED_TOOL_INSTRUCTION.format(which=which)
    return text


def to_prompt_dicts(
    chat: Sequence[Mapping[str, Any]],
    *,
    tool_prompt: str | None = None,
    system_role: bool = True,
) -> list[dict[str, Any]]:
    """Native dicts → plain ``role``/``content`` dicts with tools, calls and results as text.

    ``tool_prompt`` (from :func:`render_tool_prompt`) is appended to the first system
    message, or becomes one. With ``system_role=False`` (templates that reject a system
    message) the system text is put in front of the first user message instead.
    """
    out: list[dict[str, Any]] = []
    pending: list[str] = []  # tool results waiting to be merged into one user message

    def flush() -> None:
        if pending:
            out.append({"role": "user", "content": "\n".join(pending)})
            pending.clear()

    for item in chat:
        role = item["role"]
        if role == "tool":
            pending.append(f"{TOOL_RESPONSE_OPEN}\n{item.get('content', '')}\n{TOOL_RESPONSE_CLOSE}")
            continue
        flush()
        if role == "assistant" and item.get("tool_calls"):
            calls = [format_tool_call(c["function"]["name"], c["function"]["arguments"]) for c in item["tool_calls"]]
            content = "\n".join(([item["content"]] if item.get("content") else []) + calls)
            out.append({"role": "assistant", "content": content})
        else:
            out.append({"role": role, "content": item.get("content", "")})
    flush()

    if tool_prompt:
        if out and out[0]["role"] == "system":
            base = out[0]["content"]
            out[0] = {"role": "system", "content": f"{base}\n\n{tool_prompt}" if base else tool_prompt}
        else:
            out.insert(0, {"role": "system", "content": tool_prompt})
    if not system_role and out and out[0]["role"] == "system":
        system = out.pop(0)["content"]
        if out and out[0]["role"] == "user":
            out[0] = {"role": "user", "content": f"{system}\n\n{out[0]['content']}"}
        else:
            out.insert(0, {"role": "user", "content": system})
    return out


# --------------------------------------------------------------------------- tool_choice


def forced_choice(tool_choice: Any, tools: Sequence[dict[str, Any]] | None) -> str | None:
    """The call ``tool_choice`` requires: ``"any"``, a tool name, or None (the model may answer in text).

    ``True``, ``"any"`` and ``"required"`` mean "some tool" (the tool's name when only one is
    bound); a name or an OpenAI ``{"type": "function", "function": {"name": ...}}`` dict
    must name a bound tool (else :class:`ConfigError`).
    """
    if not tools or tool_choice in (None, False, "auto", "none"):
        return None
    if tool_choice is True or tool_choice in ("any", "required"):
        return "any" if len(tools) > 1 else tools[0]["function"]["name"]
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        if not name:
            raise ConfigError(
                f"tool_choice={tool_choice!r}: expected {{'type': 'function', 'function': {{'name': ...}}}}"
            )
        tool_choice = name
    names = [t["function"]["name"] for t in tools]
    if tool_choice not in names:
        raise ConfigError(f"tool_choice={tool_choice!r} is not a bound tool; bound: {names}")
    return str(tool_choice)


def choice_is_none(tool_choice: Any) -> bool:
    """``tool_choice="none"`` (or False): the tools are withdrawn for this call."""
    return tool_choice == "none" or tool_choice is False


def tools_for_call(tools: Sequence[dict[str, Any]] | None, tool_choice: Any) -> tuple[list[dict[str, Any]], str | None]:
    """The tools a call shows the model, and the call it must make (see :func:`forced_choice`).

    ``"none"`` withdraws the tools; a call forced to one tool shows only that tool.
    """
    tools = [] if choice_is_none(tool_choice) else list(tools or [])
    forced = forced_choice(tool_choice, tools)
    if forced not in (None, "any"):
        tools = [t for t in tools if t["function"]["name"] == forced] or tools
    return tools, forced


# --------------------------------------------------------------------------- text → tool calls


@dataclass
class ParsedReply:
    """What :func:`parse_tool_calls` found in a model's text."""

    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    invalid_tool_calls: list[dict[str, Any]] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)  # what was changed to fit the tools' schemas


_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|\Z)", re.S)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.S)


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
            body = _strip_fence(m.group(1).strip())
            if not body:  # "<tool_call></tool_call>" mentioned in prose
                kept.append(m.group(0))
                continue
            try:
                objs = _load_json(body)
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
    for start, end, objs in _json_values(text):
        if not _looks_like_call(objs):
            continue
        if accept(text[start:end], objs):
            start, end = _widen_to_fence(text, start, end)
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
            args = _load_json(args) if args.strip() else {}
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


def _json_values(text: str) -> Iterable[tuple[int, int, Any]]:
    """Every top-level JSON object/array in ``text``: (start, end, value), left to right."""
    decoder = json.JSONDecoder()
    stripped = _strip_fence(text.strip())
    if stripped != text.strip():  # a fenced reply: look inside the fence only
        offset = text.find(stripped)
        for s, e, v in _json_values(stripped):
            yield offset + s, offset + e, v
        return
    i = 0
    while i < len(text):
        if text[i] in "{[":
            try:
                value, end = decoder.raw_decode(text, i)
            except ValueError:
                i += 1
                continue
            yield i, end, value
            i = end
        else:
            i += 1


_FENCE_BEFORE = re.compile(r"```[a-zA-Z]*[ \t]*\n?[ \t]*\Z")
_FENCE_AFTER = re.compile(r"[ \t]*\n?[ \t]*```")


def _widen_to_fence(text: str, start: int, end: int) -> tuple[int, int]:
    """``text[start:end]`` grown to the code fence that holds exactly it, if there is one."""
    before = _FENCE_BEFORE.search(text, 0, start)
    after = _FENCE_AFTER.match(text, end)
    if before and after:
        return before.start(), after.end()
    return start, end


def _load_json(body: str) -> Any:
    """JSON, or a Python literal with single quotes / True / None (what small models often write)."""
    try:
        return json.loads(body)
    except ValueError as first:
        try:
            value, end = json.JSONDecoder().raw_decode(body)
            if body[end:].strip() in ("", TOOL_CALL_CLOSE):
                return value
        except ValueError:
            pass
        try:
            value = ast.literal_eval(body)
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            raise first from None
        if isinstance(value, (dict, list)):
            return value
        raise first from None


def _strip_fence(text: str) -> str:
    m = _FENCE.match(text)
    return m.group(1).strip() if m else text


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
