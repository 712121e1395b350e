"""What the two in-process backends share: a chat model that generates raw text and speaks tools through its template.

:class:`~agents.chat.local.LocalChatModel` (transformers) and
:class:`~agents.chat.llamacpp.LlamaCppChatModel` (llama.cpp) differ only in how they load
a model, tokenize and generate. Everything around that is here, once:

- ``bind_tools`` (a bad ``tool_choice`` fails at bind time, not at the first call);
- the choice between the template's native tool rendering and the ``<tool_call>`` text
  protocol (``tool_format``), and the rendering of the prompt either way;
- stop strings (a forced call stops at ``</tool_call>``);
- the reply: generated text → :class:`AIMessage` with ``tool_calls``, ``invalid_tool_calls``,
  ``usage_metadata`` (the planner's token budget reads it) and ``response_metadata``.

A backend subclasses :class:`TextChatModel` and provides ``capabilities`` (its template's
:class:`~agents.chat.chat_template.TemplateCapabilities`), ``_apply_template``, ``_prefill``
and ``_complete``, which calls :meth:`~TextChatModel._render`, generates, then returns
:meth:`~TextChatModel._chat_result`.

    class MyBackend(TextChatModel):
        def _complete(self, call):
            messages, stop, tools, tool_choice, options = call
            prompt, prefill, forced = self._render(messages, tools, tool_choice)
            text, n_in, n_out = my_generate(prompt, self._stop_strings(stop, one_call=bool(forced)))
            return self._chat_result(prefill + text, tools=tools, ..., provider="mine")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field, PrivateAttr

from agents.chat.chat_template import TemplateCapabilities
from agents.chat.toolcalls import (
    DEFAULT_TOOL_PROMPT,
    PLACEHOLDER,
    TOOL_CALL_CLOSE,
    forced_choice,
    parse_reply,
    render_tool_prompt,
    to_chat_dicts,
    to_prompt_dicts,
    tools_for_call,
)

ToolFormat = Literal["auto", "native", "prompt"]


class Rendered(NamedTuple):
    """A rendered prompt: the text the model is given, the pre-filled start of its reply, the forced call."""

    prompt: str  # ends with ``prefill``
    prefill: str
    forced: str | None  # "any", a tool name, or None


class ChatCall(NamedTuple):
    """One call of a backend: the conversation, the call's stop strings, its tools, ``tool_choice``, other options."""

    messages: list[BaseMessage]
    stop: list[str] | None
    tools: list[dict[str, Any]] | None
    tool_choice: str | dict | bool | None
    options: dict[str, Any]  # the call's other keywords (max_tokens, temperature, seed, ...)


class TextChatModel(BaseChatModel):
    """Base of the in-process chat models that generate text and parse tool calls out of it."""

    model: str = Field(description="the weights (each backend documents what it accepts)")
    temperature: float = Field(default=0.0, ge=0.0)
    stop: list[str] | None = None
    chat_template: str | None = Field(
        default=None, description="a Jinja chat template to use instead of the model's own (e.g. one with tools)"
    )
    tool_format: ToolFormat = "auto"
    tool_prompt: str = Field(default=DEFAULT_TOOL_PROMPT, description="{tools} is replaced by the schemas")
    prefill_forced_calls: bool = Field(default=True, description="start a required call's reply with <tool_call>")

    _load_seconds: float | None = PrivateAttr(default=None)

    # ------------------------------------------------------------------ what a backend provides

    @property
    def capabilities(self) -> TemplateCapabilities:
        """What the chat template in use renders natively."""
        raise NotImplementedError

    def _apply_template(self, chat: list[dict[str, Any]], **kwargs: Any) -> str:
        """Render ``chat`` (with ``tools=`` when native) through the model's chat template, generation prompt on."""
        raise NotImplementedError

    def _prefill(self, forced: str | None) -> str:
        """The start of the reply written for the model when a call is forced ("" for none)."""
        raise NotImplementedError

    def _backend_params(self) -> dict[str, Any]:
        """The backend's own settings that identify it (LangChain's ``_identifying_params``, with the shared ones)."""
        return {}

    def _complete(self, call: ChatCall) -> ChatResult:
        """One reply: render, generate, then :meth:`_chat_result`."""
        raise NotImplementedError

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        tools = kwargs.pop("tools", None)
        tool_choice = kwargs.pop("tool_choice", None)
        return self._complete(ChatCall(messages, stop, tools, tool_choice, kwargs))

    # ------------------------------------------------------------------ shared

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "temperature": self.temperature,
            "stop": self.stop,
            "tool_format": self.tool_format,
            "chat_template": self.chat_template,
            **self._backend_params(),
        }

    @property
    def load_seconds(self) -> float | None:
        """Wall time of the one load, or None before it."""
        return self._load_seconds

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Any],
        *,
        tool_choice: str | dict | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (functions, ``@tool``s, pydantic models or OpenAI dicts).

        ``tool_choice``: ``None``/``"auto"`` (the model decides), ``"none"``, ``"any"`` /
        ``"required"`` / ``True`` (must call one), a tool name, or an OpenAI
        ``{"type": "function", "function": {"name": ...}}`` dict.
        """
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice is not None:
            forced_choice(tool_choice, formatted)  # a bad choice fails here, not at the first call
            kwargs["tool_choice"] = tool_choice
        return super().bind(tools=formatted, **kwargs)

    def _uses_native_tools(self) -> bool:
        if self.tool_format != "auto":
            return self.tool_format == "native"
        return self.capabilities.native_tools

    def render_prompt(
        self,
        messages: Sequence[BaseMessage],
        tools: Sequence[dict[str, Any]] | None = None,
        tool_choice: str | dict | bool | None = None,
    ) -> str:
        """The exact text the model is given (including any pre-filled start of the reply)."""
        return self._render(messages, tools, tool_choice).prompt

    def _render(
        self,
        messages: Sequence[BaseMessage],
        tools: Sequence[dict[str, Any]] | None,
        tool_choice: str | dict | bool | None,
    ) -> Rendered:
        tools, forced = tools_for_call(tools, tool_choice)
        chat = to_chat_dicts(messages)
        if self._uses_native_tools():
            kwargs: dict[str, Any] = {"tools": tools} if tools else {}
        else:
            # Pre-filling forces the call; the "you must call" sentence on top made SmolLM2 worse (7/8 → 4/8).
            instruct = None if self.prefill_forced_calls else forced
            tool_prompt = render_tool_prompt(tools, template=self.tool_prompt, forced=instruct) if tools else None
            chat = to_prompt_dicts(chat, tool_prompt=tool_prompt, system_role=self.capabilities.system_role)
            kwargs = {}
        prefill = self._prefill(forced)
        return Rendered(self._apply_template(chat, **kwargs) + prefill, prefill, forced)

    def _stop_strings(self, stop: list[str] | None, one_call: bool) -> list[str]:
        """The model's and the call's stop strings; ``one_call`` (a forced call) adds ``</tool_call>``."""
        stops = [s for s in (list(self.stop or []) + list(stop or [])) if s]
        if one_call and TOOL_CALL_CLOSE not in stops:
            stops.append(TOOL_CALL_CLOSE)
        return stops

    def _chat_result(
        self,
        text: str,
        *,
        tools: Sequence[dict[str, Any]] | None,
        messages: Sequence[BaseMessage],
        prompt_tools: bool,
        n_in: int,
        n_out: int,
        latency: float,
        finish: str,
        provider: str,
        **metadata: Any,
    ) -> ChatResult:
        """The reply ``text`` (prefill included) as one chat turn; ``finish`` unless the reply holds calls.

        ``prompt_tools``: the tools went in as text, so an argument equal to the prompt
        example's placeholder counts as not given.
        """
        parsed = parse_reply(text, tools, messages, placeholder=PLACEHOLDER if prompt_tools else None)
        finish = "tool_calls" if parsed.tool_calls else finish
        message = AIMessage(
            content=parsed.content,
            tool_calls=parsed.tool_calls,
            invalid_tool_calls=parsed.invalid_tool_calls,
            usage_metadata={"input_tokens": n_in, "output_tokens": n_out, "total_tokens": n_in + n_out},
            response_metadata={
                "model_name": self.model,
                "model_provider": provider,
                "finish_reason": finish,
                "latency_s": round(latency, 4),
                "tokens_per_s": round(n_out / latency, 2) if latency > 0 else None,
                "tool_format": "native" if self._uses_native_tools() else "prompt",
                **metadata,
                "raw_text": text,  # before tool-call parsing
                **({"tool_call_repairs": parsed.repairs} if parsed.repairs else {}),
            },
        )
        return ChatResult(generations=[ChatGeneration(message=message, generation_info={"finish_reason": finish})])


__all__ = ["ChatCall", "Rendered", "TextChatModel", "ToolFormat"]
