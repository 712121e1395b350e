"""A deterministic chat model for tests: it plays a script of replies, tool calls included.

Each step is one reply, in order:

- an :class:`AIMessage` (copied; tool calls without an id get one);
- a plain string → an answer with that content;
- ``{"content": "..."}`` → an answer;
- ``{"tool": "detect_objects", "args": {"label": "person"}}`` → one tool call
  (add ``"content"`` for text alongside, ``"id"`` to fix the id);
- ``{"tool_calls": [{"tool": ..., "args": ...}, ...]}`` → several calls in one reply;
- a callable ``f(messages) -> AIMessage | str | dict`` → computed from what the model
  was sent (e.g. to answer from the last tool result).

Tool-call ids are ``call_0``, ``call_1``, … across the whole script. The model records
every message list it receives (``.calls``), the tool names bound with
:meth:`~ScriptedChatModel.bind_tools` (``.bound_tools``) or passed with each call
(``.call_tools``), each call's ``tool_choice`` (``.tool_choices``) and ``max_tokens``
(``.reply_caps``; recorded, never applied: it plays a model that ignores the cap). When the
script runs out it raises :class:`ScriptExhaustedError`.

>>> fake = ScriptedChatModel(steps=[{"tool": "detect_objects", "args": {"label": "person"}}, "There are 4 people."])
>>> fake.invoke("How many people?").tool_calls[0]["name"]
'detect_objects'
>>> fake.invoke("...").content
'There are 4 people.'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.tool import tool_call
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr

from agents.chat.toolcalls import message_text
from experts.errors import ConfigError, ExpertBridgeError

Step = AIMessage | str | Mapping[str, Any] | Callable[[list[BaseMessage]], Any]


class ScriptExhaustedError(ExpertBridgeError, RuntimeError):
    """A :class:`ScriptedChatModel` was called more times than it has steps."""


class ScriptedChatModel(BaseChatModel):
    """Replies from a fixed script; records what it was sent. Deterministic by construction."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    steps: list[Any] = Field(default_factory=list)
    model_name: str = "scripted"
    calls: list[list[BaseMessage]] = Field(default_factory=list, description="every message list received")
    call_tools: list[list[str]] = Field(default_factory=list, description="tool names passed with each call")
    tool_choices: list[Any] = Field(default_factory=list, description="tool_choice passed with each call (or None)")
    bound_tools: list[str] = Field(default_factory=list, description="names from the last bind_tools")
    max_tokens: int | None = Field(default=None, description="accepted like a real model's reply cap; not applied")
    reply_caps: list[Any] = Field(default_factory=list, description="max_tokens passed with each call (or None)")

    _position: int = PrivateAttr(default=0)
    _next_id: int = PrivateAttr(default=0)

    def __init__(self, steps: Sequence[Step] = (), **kwargs: Any) -> None:
        # A malformed step fails here (ConfigError), not at the n-th call.
        compiled = [s if callable(s) else _to_message(s, index=i) for i, s in enumerate(steps)]
        super().__init__(steps=compiled, **kwargs)

    @property
    def _llm_type(self) -> str:
        return "expertbridge-scripted"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "steps": len(self.steps)}

    @property
    def remaining(self) -> int:
        """Steps not played yet."""
        return len(self.steps) - self._position

    def reset(self) -> None:
        """Rewind the script and forget what was recorded."""
        self._position = self._next_id = 0
        self.calls.clear()
        self.call_tools.clear()
        self.tool_choices.clear()
        self.reply_caps.clear()

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Any],
        *,
        tool_choice: str | dict | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        formatted = [convert_to_openai_tool(t) for t in tools]
        self.bound_tools = [t["function"]["name"] for t in formatted]
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return super().bind(tools=formatted, **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.calls.append(list(messages))
        self.call_tools.append([t["function"]["name"] for t in kwargs.get("tools") or []])
        self.tool_choices.append(kwargs.get("tool_choice"))
        self.reply_caps.append(kwargs.get("max_tokens"))
        if self._position >= len(self.steps):
            last = messages[-1] if messages else None
            seen = f"{type(last).__name__}: {message_text(last.content)[:200]!r}" if last is not None else "no messages"
            raise ScriptExhaustedError(
                f"ScriptedChatModel: the script has {len(self.steps)} step(s) and all were used; "
                f"call #{len(self.calls)} got {len(messages)} message(s), the last {seen}"
            )
        step = self.steps[self._position]
        self._position += 1
        reply = _to_message(step(list(messages)), index=self._position - 1) if callable(step) else step
        message = self._with_ids(reply)
        n_in = sum(len(message_text(m.content).split()) for m in messages)
        n_out = len(message_text(message.content).split())
        message.usage_metadata = {"input_tokens": n_in, "output_tokens": n_out, "total_tokens": n_in + n_out}
        finish = "tool_calls" if message.tool_calls else "stop"
        message.response_metadata = {
            **message.response_metadata,
            "model_name": self.model_name,
            "model_provider": "scripted",
            "finish_reason": finish,
            "step": self._position - 1,
        }
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _with_ids(self, reply: AIMessage) -> AIMessage:
        calls = []
        for call in reply.tool_calls:
            call_id = call.get("id")
            if not call_id:
                call_id = f"call_{self._next_id}"
            self._next_id += 1
            calls.append(tool_call(name=call["name"], args=dict(call.get("args") or {}), id=call_id))
        return reply.model_copy(update={"tool_calls": calls}, deep=True)


def _to_message(step: Any, *, index: int) -> AIMessage:
    if isinstance(step, AIMessage):
        return step
    if isinstance(step, str):
        return AIMessage(content=step)
    if isinstance(step, Mapping):
        unknown = set(step) - {"content", "tool", "args", "id", "tool_calls"}
        if unknown or not ({"content", "tool", "tool_calls"} & set(step)):
            raise ConfigError(
                f"script step {index}: {dict(step)!r} — expected {{'tool': NAME, 'args': {{...}}}}, "
                "{'tool_calls': [...]} or {'content': TEXT}"
            )
        specs = list(step.get("tool_calls") or []) + ([step] if "tool" in step else [])
        calls = []
        for spec in specs:
            if not isinstance(spec, Mapping) or not isinstance(spec.get("tool"), str):
                raise ConfigError(f"script step {index}: a tool call needs 'tool': NAME, got {spec!r}")
            args = spec.get("args") or {}
            if not isinstance(args, Mapping):
                raise ConfigError(f"script step {index}: 'args' of {spec['tool']!r} must be a dict")
            calls.append(tool_call(name=spec["tool"], args=dict(args), id=spec.get("id")))
        return AIMessage(content=str(step.get("content", "")), tool_calls=calls)
    raise ConfigError(
        f"script step {index}: {type(step).__name__} is not a step (AIMessage, str, dict or callable(messages))"
    )


__all__ = ["ScriptExhaustedError", "ScriptedChatModel", "Step"]
