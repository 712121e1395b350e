"""Finding JSON in what a model wrote: fenced, bare among prose, or as a Python literal.

>>> list(json_values('call {"a": 1} then [2]'))
[(5, 13, {'a': 1}), (19, 22, [2])]
>>> load_json("{'a': True}")
{'a': True}
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable
from typing import Any

from agents.chat.toolcalls.protocol import TOOL_CALL_CLOSE

_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.S)


def json_values(text: str) -> Iterable[tuple[int, int, Any]]:
    """Every top-level JSON object/array in ``text``: (start, end, value), left to right."""
    decoder = json.JSONDecoder()
    stripped = strip_fence(text.strip())
    if stripped != text.strip():  # a fenced reply: look inside the fence only
        offset = text.find(stripped)
        for s, e, v in json_values(stripped):
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


def widen_to_fence(text: str, start: int, end: int) -> tuple[int, int]:
    """``text[start:end]`` grown to the code fence that holds exactly it, if there is one."""
    before = _FENCE_BEFORE.search(text, 0, start)
    after = _FENCE_AFTER.match(text, end)
    if before and after:
        return before.start(), after.end()
    return start, end


def load_json(body: str) -> Any:
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


def strip_fence(text: str) -> str:
    m = _FENCE.match(text)
    return m.group(1).strip() if m else text
