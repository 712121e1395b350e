"""Chat templates: what one renders natively (tools, calls, results, a system role), and the fallbacks.

Both in-process backends render a conversation through a Jinja chat template: a
transformers tokenizer's, or the one a GGUF file carries (:class:`GGUFChatTemplate`,
rendered by transformers' own code so it behaves the same). :func:`probe_template`
renders sentinel conversations once to learn what a template supports; the backends
fall back to the ``<tool_call>`` text protocol for whatever it does not.

    caps = probe_template(tokenizer)              # TemplateCapabilities(tools=False, ...)
    caps.native_tools                             # False: SmolLM2's template prints role + content only
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agents.chat.toolcalls import TOOL_CALL_OPEN

#: Used when a tokenizer has no chat template at all (a base model): ChatML.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TemplateCapabilities:
    """What a tokenizer's chat template renders natively (found by :func:`probe_template`)."""

    tools: bool
    tool_calls: bool
    tool_role: bool
    system_role: bool

    @property
    def native_tools(self) -> bool:
        return self.tools and self.tool_calls and self.tool_role


def probe_template(tokenizer: Any, chat_template: str | None = None) -> TemplateCapabilities:
    """Render sentinel conversations to learn what the chat template really supports.

    ``chat_template`` overrides the tokenizer's own. A template "has a tool role" only if
    its source mentions ``tool``: templates that print any role verbatim (SmolLM2's)
    would render it, but the model never saw it.
    """
    src = chat_template or tokenizer.chat_template
    src = src if isinstance(src, str) else str(src)

    def renders(messages: list[dict], sentinel: str, **kw: Any) -> bool:
        try:
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, chat_template=chat_template, **kw
            )
        except Exception:  # noqa: BLE001 - any template error means "not supported"
            return False
        return sentinel in text

    tool = {
        "type": "function",
        "function": {
            "name": "eb_probe_tool",
            "description": "probe",
            "parameters": {"type": "object", "properties": {}},
        },
    }
    call = {"id": "call_0", "type": "function", "function": {"name": "eb_probe_call", "arguments": {}}}
    user = {"role": "user", "content": "hi"}
    asked = {"role": "assistant", "content": "", "tool_calls": [call]}
    result = {"role": "tool", "content": "eb_probe_result", "name": "eb_probe_call", "tool_call_id": "call_0"}
    return TemplateCapabilities(
        tools=renders([user], "eb_probe_tool", tools=[tool]),
        tool_calls=renders([user, asked], "eb_probe_call"),
        tool_role=bool(re.search(r"""['"]tool['"]""", src)) and renders([user, asked, result], "eb_probe_result"),
        system_role=renders([{"role": "system", "content": "eb_probe_system"}, user], "eb_probe_system"),
    )


class GGUFChatTemplate:
    """A GGUF's chat template, with the ``apply_chat_template`` interface of a transformers tokenizer.

    Rendering is transformers' own (sandboxed Jinja, its ``tojson``), so a template behaves
    exactly as it does for the transformers backend, and :func:`probe_template` works on it.
    """

    def __init__(self, template: str, bos_token: str = "", eos_token: str = "") -> None:
        self.chat_template = template
        self.bos_token, self.eos_token = bos_token, eos_token

    def apply_chat_template(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        tokenize: bool = False,
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        if tokenize:
            raise ValueError("GGUFChatTemplate renders text only (tokenize=False)")
        rendered, _ = render_jinja_template(
            conversations=[list(messages)],
            tools=list(tools) if tools else None,
            chat_template=chat_template or self.chat_template,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            **kwargs,
        )
        return rendered[0]


def writes_tagged_calls(template: GGUFChatTemplate) -> bool:
    """Does the template write an assistant's tool calls as ``<tool_call>`` blocks (Qwen2.5, Hermes)?"""
    call = {"id": "call_0", "type": "function", "function": {"name": "eb_probe_call", "arguments": {}}}
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    try:
        text = template.apply_chat_template(chat, add_generation_prompt=False)
    except Exception:  # noqa: BLE001
        return False
    return TOOL_CALL_OPEN in text and "eb_probe_call" in text
