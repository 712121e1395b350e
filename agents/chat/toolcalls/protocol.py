"""The ``<tool_call>`` text protocol: its tags, the tool prompt, and how one call is written.

For models whose chat template cannot render tools natively, the tools and the calling
instructions go into the system message as text (:func:`render_tool_prompt`), and a call
is the JSON object between ``<tool_call>`` tags (:func:`format_tool_call`), the Hermes /
Qwen2.5 convention most open instruct models have seen.

>>> format_tool_call("count", {"label": "dog"})
'<tool_call>\\n{"name": "count", "arguments": {"label": "dog"}}\\n</tool_call>'
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

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
