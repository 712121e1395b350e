"""LangChain messages → the dicts a chat template renders: natively, or with tools as text.

>>> to_chat_dicts([HumanMessage("hi")])
[{'role': 'user', 'content': 'hi'}]
>>> to_prompt_dicts([{"role": "tool", "content": "2 dogs"}])
[{'role': 'user', 'content': '<tool_response>\\n2 dogs\\n</tool_response>'}]
>>> [m.content for m in to_text_messages([ToolMessage("2 dogs", tool_call_id="call_0")])]
['<tool_response>\\n2 dogs\\n</tool_response>']
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
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

from agents.chat.toolcalls.protocol import TOOL_RESPONSE_CLOSE, TOOL_RESPONSE_OPEN, format_tool_call


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


def to_text_messages(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """LangChain messages with tool calls and results as text (the prompt format), in plain
    system/user/assistant messages: for chat servers that refuse tool messages or cannot render them
    (llama-cpp-python's OpenAI server rejects an assistant's null content, and its
    ``chatml-function-calling`` template drops tool results)."""
    kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    return [
        kinds[d["role"]](d["content"]) if d["role"] in kinds else ChatMessage(d["content"], role=d["role"])
        for d in to_prompt_dicts(to_chat_dicts(messages))
    ]
