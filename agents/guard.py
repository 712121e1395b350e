"""The planner's guard: limits, tool allow-list, error feedback and tracing around every model and tool call.

The agent graph is built once per planner, so its middleware is too: :class:`GuardMiddleware`
holds nothing of a run. Each run brings its own :class:`RunGuard` (trace, start time, token and
call counters) in the agent's run context, next to the image the tools read:

    guard = RunGuard(trace, limits, {"detect_objects"}, time.perf_counter(), "any", texts=texts)
    agent.invoke({"messages": [...]}, context=RunContext(image="bus.jpg", guard=guard))

so two questions never share counters, even when they run at once on two threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse, ToolCallRequest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from agents.answers import text_of
from agents.chat.factory import reply_cap
from agents.chat.toolcalls import to_text_messages
from agents.deadline import run_with_deadline
from agents.model_errors import first_line, model_failure, refuses_forced_choice, refuses_tool_history
from agents.tools import ToolContext
from agents.trace import Step, Trace
from experts.errors import ExpertBridgeError

if TYPE_CHECKING:  # the planner imports this module: only the type, for the annotations
    from agents.planner import PlannerLimits


@dataclass
class ModelQuirks:
    """What the planner learned about its model's server, kept across runs."""

    refuses_forced_choice: bool = False  # tool_choice="any" is refused: name the lone tool, or ask for a call
    text_tool_history: bool = False  # tool calls and results are refused: send them as text


@dataclass(frozen=True)
class GuardTexts:
    """What the guard says to the model (the texts live with the planner's other prompts)."""

    answer_now: str  # the budget is used up: tools withdrawn
    answer_from_evidence: str  # the model asked again for a result it has
    call_a_tool: str  # instead of a forced tool choice, for servers that refuse one
    restate: Callable[[str], str]  # question -> the reminder sent after tool results


@dataclass(frozen=True)
class RunContext(ToolContext):
    """One run's context in the agent graph: the image (for the tools) and the run's guard."""

    guard: RunGuard | None = None


class GuardMiddleware(AgentMiddleware):
    """The middleware of a planner's one agent graph: hands each call to the guard of the run it belongs to."""

    def wrap_model_call(self, request: ModelRequest, handler) -> ModelResponse:
        return _guard_of(request.runtime).wrap_model_call(request, handler)

    def wrap_tool_call(self, request: ToolCallRequest, handler) -> ToolMessage:
        return _guard_of(request.runtime).wrap_tool_call(request, handler)


def _guard_of(runtime: Any) -> RunGuard:
    guard = getattr(getattr(runtime, "context", None), "guard", None)
    if guard is None:  # a bug, not a user error: every planner run passes its RunContext
        raise RuntimeError("the planner's agent was invoked without a RunContext carrying its RunGuard")
    return guard


class RunGuard:
    """Limits, tool allow-list, error feedback and tracing for one run (one question)."""

    def __init__(
        self,
        trace: Trace,
        limits: PlannerLimits,
        allowed: set[str],
        start: float,
        look_first: str | None,
        quirks: ModelQuirks | None = None,
        model_name: str = "chat model",
        *,
        texts: GuardTexts,
    ) -> None:
        # look_first: the tool_choice of the first model call ("any" or a tool name); None = the model decides
        self.trace, self.limits, self.allowed, self.start, self.look_first = trace, limits, allowed, start, look_first
        self.quirks, self.model_name, self.texts = quirks or ModelQuirks(), model_name, texts
        self.tokens = 0
        self.tool_calls = 0
        self.exceeded: str | None = None  # set when a call overran the time budget and was abandoned

    def _elapsed(self) -> float:
        return time.perf_counter() - self.start

    def _remaining(self) -> float:
        return self.limits.time_budget_s - self._elapsed()

    def _overran(self, what: str) -> str:
        budget = self.limits.time_budget_s
        self.exceeded = f"time budget of {budget:g}s exceeded: {what} was still running at {self._elapsed():.1f}s"
        return self.exceeded

    def _stop(self, reason: str) -> ModelResponse:
        self.trace.stopped_by = reason
        self.trace.steps.append(Step("limit", self._elapsed(), 0.0, content=reason))
        return ModelResponse(result=[AIMessage(f"Answer: (no answer: {reason})")])

    def _ask_for_a_call(self, request: ModelRequest, refused: Any) -> tuple[ModelRequest, str]:
        """The request without the ``refused`` tool choice, and how it asks instead: ``"any"`` over one tool
        is that tool, named (llama-cpp-python's server takes a named choice); else ``"auto"`` and an
        instruction to call a tool."""
        name = getattr(request.tools[0], "name", None) if len(request.tools) == 1 else None
        if refused == "any" and name:
            return request.override(tool_choice=name), f"tool_choice={name!r} (the only tool)"
        ask = HumanMessage(self.texts.call_a_tool)
        how = "tool_choice='auto' and an instruction to call a tool"
        return request.override(tool_choice="auto", messages=[*request.messages, ask]), how

    def wrap_model_call(self, request: ModelRequest, handler) -> ModelResponse:
        # Our budgets, not LangChain's limit middlewares (langchain 1.5, tried): ModelCallLimitMiddleware
        # ends the run with its "limits exceeded" text as the reply (parsed as the answer, no trace step) and
        # counts model steps, not calls (a retry here is a second call); ToolCallLimitMiddleware blocks a call
        # before wrap_tool_call sees it (gone from the trace) and leaves the tools bound. We withdraw the tools
        # and ask for an answer, and record a "limit" step. No LangChain middleware has a token or time budget.
        model_calls = len(self.trace.model_steps)
        if self.exceeded:
            return self._stop(self.exceeded)
        if model_calls >= self.limits.max_model_calls:
            return self._stop(f"model-call limit of {self.limits.max_model_calls} reached")
        if self.tokens >= self.limits.max_tokens:
            return self._stop(f"token budget of {self.limits.max_tokens} used up")
        if self._elapsed() >= self.limits.time_budget_s:
            return self._stop(f"time budget of {self.limits.time_budget_s:g}s used up")
        if self.tool_calls >= self.limits.max_tool_calls or model_calls == self.limits.max_model_calls - 1:
            # Last chance: withdraw the tools so the model must answer from what it has.
            request = request.override(tools=[], messages=[*request.messages, HumanMessage(self.texts.answer_now)])
        elif request.messages and isinstance(request.messages[-1], ToolMessage):
            reminder = self.texts.restate(self.trace.question)
            request = request.override(messages=[*request.messages, HumanMessage(reminder)])
        elif model_calls == 0 and self.look_first and request.tools:
            # The model cannot see the image: its first move must be to look (small models otherwise guess).
            if self.quirks.refuses_forced_choice:
                request, _ = self._ask_for_a_call(request, self.look_first)
            else:
                request = request.override(tool_choice=self.look_first)
        cap = reply_cap(request.model, self.limits.max_reply_tokens)
        if cap:
            request = request.override(model_settings={**request.model_settings, **cap})
        response = self._timed_call(request, handler)
        if response is None:
            return self._stop(self._overran("the model call"))
        message = _last_ai(response)
        if message.tool_calls and request.tools and all(self._already_answered(c) for c in message.tool_calls):
            # Small models loop, asking again for evidence they already have: ask for the answer instead.
            repeated = ", ".join(f"{c['name']}({c['args']})" for c in message.tool_calls)
            self.trace.steps.append(
                Step("retry", self._elapsed(), 0.0, content=f"the model repeated {repeated}; asked it to answer")
            )
            answer = HumanMessage(self.texts.answer_from_evidence)
            request = request.override(tools=[], messages=[*request.messages, answer])
            response = self._timed_call(request, handler)
            if response is None:
                return self._stop(self._overran("the model call"))
        return response

    def _timed_call(self, request: ModelRequest, handler) -> ModelResponse | None:
        """One model call within the time left, recorded in the trace and counted against the token budget;
        ``None`` when it overran the budget (it is abandoned)."""
        t0 = time.perf_counter()
        try:
            response = self._call_model(request, handler)
        except TimeoutError:
            return None
        seconds = time.perf_counter() - t0
        replies = [i for i, m in enumerate(response.result) if isinstance(m, AIMessage)]
        message = response.result[replies[-1]] if replies else AIMessage("")
        note = None
        if len(text_of(message)) > self.limits.max_reply_chars:  # a model that ignored (or has no) reply cap
            message, note = _cut(message, self.limits.max_reply_chars)
            result = list(response.result)
            result[replies[-1]] = message
            response = ModelResponse(result=result, structured_response=response.structured_response)
        usage = message.usage_metadata or {}
        prompt_chars = len(request.system_prompt or "") + sum(len(text_of(m)) for m in request.messages)
        inputs = usage.get("input_tokens", prompt_chars // 4)  # ~4 characters a token when the model won't say
        outputs = usage.get("output_tokens", len(text_of(message)) // 4)
        self.tokens += inputs + outputs
        self.trace.steps.append(
            Step(
                "model",
                t0 - self.start,
                seconds,
                prompt_messages=len(request.messages) + 1,
                prompt_chars=prompt_chars,
                input_tokens=inputs,
                output_tokens=outputs,
                content=text_of(message),
                tool_calls=[{"name": c["name"], "args": c["args"]} for c in message.tool_calls],
                note=note,
            )
        )
        return response

    def _already_answered(self, call: dict) -> bool:
        """Did a tool already answer exactly this call (same tool, same arguments) in this run?"""
        args = dict(call.get("args") or {})
        return any(s.tool == call["name"] and s.arguments == args and s.error is None for s in self.trace.tool_steps)

    def _call_model(self, request: ModelRequest, handler) -> ModelResponse:
        """``handler(request)`` within the time left (``TimeoutError`` past it); a request refused for a quirk
        we can work around (:meth:`_work_around`) is retried once; any other failure of the model or its
        server is one ChatModelError."""
        if self.quirks.text_tool_history:
            request = request.override(messages=to_text_messages(request.messages))
        try:
            return run_with_deadline(lambda: handler(request), self._remaining())
        except (ExpertBridgeError, TimeoutError):
            raise
        except Exception as err:  # noqa: BLE001 - whatever the provider raises, the user gets one clear line
            retry = self._work_around(request, err)
            if retry is None:
                raise model_failure(self.model_name, err) from err
        try:
            return run_with_deadline(lambda: handler(retry), self._remaining())
        except (ExpertBridgeError, TimeoutError):
            raise
        except Exception as err:  # noqa: BLE001
            raise model_failure(self.model_name, err) from err

    def _work_around(self, request: ModelRequest, err: Exception) -> ModelRequest | None:
        """``request`` in a form the server may take after it refused it with ``err``, the quirk learned for
        the planner's later calls and the retry noted in the trace; ``None`` when no workaround applies.

        A forced tool choice: the lone tool named, or ``"auto"`` and an instruction. Tool calls and results
        in the history: the same history as text (llama-cpp-python's server refuses the null content of an
        assistant's tool calls, HTTP 500, and its chatml-function-calling template drops tool results)."""
        if _is_forced(request.tool_choice) and refuses_forced_choice(err):
            self.quirks.refuses_forced_choice = True
            retry, how = self._ask_for_a_call(request, request.tool_choice)
            refused = f"tool_choice={request.tool_choice!r}"
        elif _has_tool_history(request.messages) and refuses_tool_history(err):
            self.quirks.text_tool_history = True
            retry = request.override(messages=to_text_messages(request.messages))
            refused, how = "the tool calls and results in the history", "them as text"
        else:
            return None
        content = f"the server refused {refused} ({first_line(err)}); asked again with {how}"
        self.trace.steps.append(Step("retry", self._elapsed(), 0.0, content=content))
        return retry

    def wrap_tool_call(self, request: ToolCallRequest, handler) -> ToolMessage:
        call = request.tool_call
        name, args, call_id = call["name"], dict(call.get("args") or {}), call.get("id") or ""
        t0 = time.perf_counter()
        if name not in self.allowed or request.tool is None:
            text = f"error: unknown tool {name!r}; the tools are: {', '.join(sorted(self.allowed))}"
            message = ToolMessage(text, tool_call_id=call_id, name=name, status="error")
        elif self.tool_calls >= self.limits.max_tool_calls:
            text = f"error: the limit of {self.limits.max_tool_calls} tool calls is reached; answer now"
            message = ToolMessage(text, tool_call_id=call_id, name=name, status="error")
        elif self._elapsed() >= self.limits.time_budget_s:
            text = "error: the time budget is used up; answer now"
            message = ToolMessage(text, tool_call_id=call_id, name=name, status="error")
        else:
            self.tool_calls += 1
            try:
                message = run_with_deadline(lambda: handler(request), self._remaining())
            except TimeoutError:
                text = f"error: {self._overran(f'tool {name!r}')}; its result was dropped"
                message = ToolMessage(text, tool_call_id=call_id, name=name, status="error")
            except Exception as err:  # noqa: BLE001 - a tool failure is evidence for the model, not a crash
                message = ToolMessage(f"error: {type(err).__name__}: {err}", tool_call_id=call_id, name=name)
                message.status = "error"
        self.trace.steps.append(tool_step(message, name, args, t0 - self.start, time.perf_counter() - t0))
        return message


def tool_step(message: ToolMessage, name: str, args: dict, started: float, seconds: float) -> Step:
    """The trace step of one tool call: what the model read, the evidence, the store's counts, any error."""
    artifact = message.artifact if isinstance(message.artifact, dict) else {}
    text = text_of(message)
    failed = message.status == "error" or text.startswith("error:")
    store = artifact.get("store") or {}
    return Step(
        "tool",
        started,
        seconds,
        tool=name,
        arguments=args,
        output=text,
        evidence=artifact.get("evidence"),
        store_hits=store.get("hits"),
        store_misses=store.get("misses"),
        error=text if failed else None,
    )


def _cut(message: AIMessage, limit: int) -> tuple[AIMessage, str]:
    """The reply with its text cut to ``limit`` characters (head and tail kept, so a final ``Answer:`` line
    survives), and the note saying so."""
    text = text_of(message)
    marker = f"\n[… {len(text) - limit:,} characters cut …]\n"
    head = max(0, (limit - len(marker)) // 2)
    tail = max(0, limit - len(marker) - head)
    cut = text[:head] + marker + (text[-tail:] if tail else "")
    note = f"reply of {len(text):,} characters cut to {len(cut):,} (max_reply_chars={limit})"
    return message.model_copy(update={"content": cut}), note


def _last_ai(response: ModelResponse) -> AIMessage:
    return next((m for m in reversed(response.result) if isinstance(m, AIMessage)), AIMessage(""))


def _has_tool_history(messages: list) -> bool:
    return any(isinstance(m, ToolMessage) or (isinstance(m, AIMessage) and m.tool_calls) for m in messages)


def _is_forced(tool_choice: Any) -> bool:
    return tool_choice not in (None, False, "auto", "none")
