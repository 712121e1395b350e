"""Tool calling for models whose only interface is text: message conversion, the tool prompt, parsing.

=============  ==============================================================================
module         what
=============  ==============================================================================
``protocol``   the ``<tool_call>`` tags, :data:`DEFAULT_TOOL_PROMPT`, :func:`render_tool_prompt`
``messages``   LangChain messages → native chat-template dicts → prompt-format dicts
``choice``     ``tool_choice``: the tools a call shows, the call it forces, its JSON schema
``arguments``  :func:`conform_arguments`: a call's arguments fitted to the tool's schema
``json_text``  JSON found in model text (fenced, bare, Python literals)
``parsing``    :func:`parse_tool_calls` / :func:`parse_reply`: text → content and tool calls
=============  ==============================================================================

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

from agents.chat.toolcalls.arguments import conform_arguments
from agents.chat.toolcalls.choice import choice_is_none, forced_call_schema, forced_choice, tools_for_call
from agents.chat.toolcalls.messages import message_text, to_chat_dicts, to_prompt_dicts, to_text_messages
from agents.chat.toolcalls.parsing import ParsedReply, parse_reply, parse_tool_calls
from agents.chat.toolcalls.protocol import (
    DEFAULT_TOOL_PROMPT,
    FORCED_TOOL_INSTRUCTION,
    PLACEHOLDER,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    TOOL_RESPONSE_CLOSE,
    TOOL_RESPONSE_OPEN,
    format_tool_call,
    render_tool_prompt,
)

__all__ = [
    "DEFAULT_TOOL_PROMPT",
    "FORCED_TOOL_INSTRUCTION",
    "PLACEHOLDER",
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "TOOL_RESPONSE_CLOSE",
    "TOOL_RESPONSE_OPEN",
    "ParsedReply",
    "choice_is_none",
    "conform_arguments",
    "forced_call_schema",
    "forced_choice",
    "format_tool_call",
    "message_text",
    "parse_reply",
    "parse_tool_calls",
    "render_tool_prompt",
    "tools_for_call",
    "to_chat_dicts",
    "to_prompt_dicts",
    "to_text_messages",
]
