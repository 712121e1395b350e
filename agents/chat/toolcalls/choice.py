"""``tool_choice``: which tools a call shows the model, and which call it must make.

>>> tools = [{"type": "function", "function": {"name": "count", "parameters": {}}}]
>>> forced_choice("any", tools)
'count'
>>> tools_for_call(tools, "none")
([], None)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from experts.errors import ConfigError


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


def forced_call_schema(tools: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """JSON schema of ``{"name": ..., "arguments": {...}}`` for one of ``tools`` (OpenAI tool dicts).

    A backend that can constrain decoding (llama.cpp's grammars) uses it so that a forced
    call always parses.
    """
    variants = []
    for tool in tools:
        fn = tool.get("function", tool)
        params = dict(fn.get("parameters") or {})
        params.setdefault("type", "object")
        params.setdefault("properties", {})
        variants.append(
            {
                "type": "object",
                "properties": {"name": {"const": fn["name"]}, "arguments": params},
                "required": ["name", "arguments"],
            }
        )
    return variants[0] if len(variants) == 1 else {"oneOf": variants}
