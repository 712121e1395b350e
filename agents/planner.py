"""The chain-of-thought planner: an LLM that calls experts as tools and reasons to an answer.

    planner = Planner(create_chat_model("local"), ExpertToolbox(detector=yolo))
    result = planner.run("bus.jpg", "How many people are in the image?")
    result.answer, result.rationale, result.evidence_used
    result.trace.to_json()                      # every model and tool call, with timings

Built on LangChain's ``create_agent`` (a LangGraph tool loop). One middleware, the
:class:`_Guard`, does three jobs at the two places where the loop calls out:

* limits: model calls, tool calls, total tokens and wall-clock time; when a budget runs
  out the model is asked to answer with what it has (tools are withdrawn), or the run
  stops and says which limit stopped it. The time budget holds *during* calls too: each
  model and tool call runs with the remaining time as its deadline, and one that overruns
  is abandoned (its thread finishes in the background; its result is dropped) and the run
  ends "time budget exceeded". Each reply is capped twice: ``max_reply_tokens`` goes to
  the chat model (:func:`~agents.chat.reply_cap`), and a reply text still longer than
  ``max_reply_chars`` is cut, with a note on its trace step;
* safety: only registered tools run; unknown names and failing tools come back to the
  model as error text, never as exceptions; the model never executes code;
* the trace: prompt size, latency and tokens of each model call; inputs, outputs, time
  and store hits of each tool call.

``look_first`` (default) requires a tool call on the first turn (``tool_choice="any"``):
the model cannot see the image, and small models otherwise answer without looking.
``first_tool`` names the tool to look with first (e.g. ``describe_image`` when a trained
bridge is given: otherwise small models always reach for the detector); with ``look_first``
and a single tool, that tool. A tool without arguments is called by the planner itself and
its result opens the conversation (SmolLM2, forced to call it, wrote a JSON schema into the
empty arguments); one with arguments is forced as the model's first call.

Some servers refuse a forced tool choice (llama-cpp-python's OpenAI server answers HTTP
500; some vLLM/TGI configurations 400): the guard then asks again with ``"auto"`` plus an
instruction to call a tool, notes the retry in the trace, and skips forcing for the rest
of the planner's life. Any other failure of the model or its server becomes one
:class:`~experts.errors.ChatModelError` saying which model failed, why, and what to try.

With ``rules=True``, counting and presence questions about detector classes are answered
without the LLM (see :mod:`agents.rules`), and the trace says so (``mode="rule"``).
"""

from __future__ import annotations

import contextvars
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse, ToolCallRequest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from agents import rules
from agents.chat.factory import model_note, reply_cap
from agents.tools import ExpertToolbox
from agents.trace import Step, Trace
from experts.errors import ChatModelError, ExpertBridgeError, ExpertRunError
from experts.images import ImageSource

SYSTEM_PROMPT = """You answer questions about an image you cannot see directly. You have tools: \
expert vision models that look at the image for you. Think step by step:
1. Decide which tool gives the evidence the question needs, and call it.
2. Read the tool's result; call another tool only if the evidence is not enough.
3. Reason from the evidence only. Never invent objects, counts or details no tool reported.
4. Mind negations: "is there not a X?", "is no X present?" and "does the image not contain a X?" are true \
(answer yes) when there is no X. A question offering choices ("a cat or a dog?") is answered with one of them.
When you are done, reply in exactly this format:
Reasoning: <restate the question; then compare what it asks about with the tool results, step by step>
Answer: <the short answer>
Evidence: <the names of the tools whose results you used, comma-separated>"""

ANSWER_NOW = "Tool budget used up. Answer now from the evidence above, in the required format."
#: Sent (with the tools withdrawn) when the model asks again for a result it already has.
ANSWER_FROM_EVIDENCE = "You already have that tool's result above. Answer now from it, in the required format."
#: Sent after tool results, before the model reasons: small models lose the question behind the system prompt
#: and the evidence (Qwen2.5-Coder-1.5B on easy-VQA answered a colour question from the shape line).
RESTATE_QUESTION = (
    'The question was: "{question}". Answer it from the tool results above (or call another tool if they '
    "are not enough), in the required format."
)
#: Added to the restated question when it is a yes/no question. Measured with Qwen2.5-Coder-1.5B on 48 easy-VQA
#: train questions (presence and negated): 85% without it, 92% with it. Only for yes/no questions: sent with
#: "what colour is the shape?" it made the model answer "Yes" to 23 of 24.
YES_NO_HINT = (
    " It is a yes/no question: first say whether the thing it asks about is present according to the tools; "
    "if the question says 'not' or 'no', the answer is the opposite."
)
_YES_NO = re.compile(r"^\W*(is|are|was|were|do|does|did|has|have|had|can|could|will|would|should)\b", re.I)
#: Sent instead of a forced tool choice to servers that refuse one.
CALL_A_TOOL = "You cannot see the image yourself. First call one of the tools to look at it; answer only after that."

T = TypeVar("T")


@dataclass(frozen=True)
class PlannerLimits:
    """Budgets of one run. ``max_tokens`` counts prompt + completion tokens of every model call;
    ``time_budget_s`` is wall-clock, enforced during calls; ``max_reply_tokens`` caps each reply
    at the model (where it has such a setting) and ``max_reply_chars`` cuts a longer reply text."""

    max_tool_calls: int = 6
    max_model_calls: int = 8
    max_tokens: int = 16_000
    time_budget_s: float = 300.0
    max_reply_tokens: int = 1024
    max_reply_chars: int = 8192


@dataclass(frozen=True)
class ReasoningResult:
    """The parsed answer, the rationale, the tools it rests on, and the full trace."""

    answer: str | None
    rationale: str | None
    evidence_used: list[str] = field(default_factory=list)
    trace: Trace | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "rationale": self.rationale,
            "evidence_used": self.evidence_used,
            "trace": None if self.trace is None else self.trace.to_dict(),
        }


class Planner:
    """Answers a question about an image with a chat model that calls the toolbox's experts."""

    def __init__(
        self,
        model: BaseChatModel,
        toolbox: ExpertToolbox,
        *,
        limits: PlannerLimits = PlannerLimits(),
        rules: bool = False,
        look_first: bool = True,
        first_tool: str | None = None,
        system_prompt: str = SYSTEM_PROMPT,
        call_lone_tool: bool = True,
    ) -> None:
        self.model, self.toolbox, self.limits, self.system_prompt = model, toolbox, limits, system_prompt
        self.rules, self.look_first, self.first_tool = rules, look_first, first_tool
        self.call_lone_tool = call_lone_tool  # with look_first and one argument-free tool: call it without the model
        self.quirks = ModelQuirks()  # what this planner learned about its model's server

    @property
    def model_name(self) -> str:
        params = getattr(self.model, "_identifying_params", {}) or {}
        name = params.get("model") or params.get("model_name") or getattr(self.model, "model", None)
        return f"{self.model._llm_type}:{name}" if name else self.model._llm_type

    def run(self, image: ImageSource, question: str) -> ReasoningResult:
        start = time.perf_counter()
        trace = Trace(
            question=question, image=_describe(image), model=self.model_name, model_note=model_note(self.model)
        )
        if self.rules:
            result = self._rule_answer(image, question, trace, start)
            if result is not None:
                return result
        tools = self.toolbox.tools_for(image)
        first = next((t for t in tools if t.name == self.first_tool), None)
        if first is None and self.look_first and self.call_lone_tool and len(tools) == 1 and not tools[0].args:
            # A forced choice among one tool without arguments leaves the model nothing to decide:
            # calling it ourselves saves a model call (about 3 s of Qwen2.5-1.5B on 2 cores).
            first = tools[0]
        look = "any" if self.look_first else None
        guard = _Guard(trace, self.limits, {t.name for t in tools}, start, look, self.quirks, self.model_name)
        messages: list = [HumanMessage(question)]
        if first is not None and not first.args:
            opening = self._first_look(first, trace, start)
            if opening is None:  # the tool overran the time budget: the run is over
                return ReasoningResult(trace.answer, None, [], trace)
            messages += opening
            guard.tool_calls, guard.look_first = 1, None
        elif first is not None and self.look_first:
            guard.look_first = first.name
        agent = create_agent(self.model, tools, system_prompt=self.system_prompt, middleware=[guard])
        steps = self.limits.max_model_calls + self.limits.max_tool_calls
        state = agent.invoke({"messages": messages}, config={"recursion_limit": 2 * steps + 8})
        final = next((m for m in reversed(state["messages"]) if isinstance(m, AIMessage)), None)
        text = _text(final) if final is not None else ""
        answer, rationale, cited = parse_answer(text)
        used = _evidence_used(cited, trace)
        trace.answer, trace.rationale, trace.evidence_used = answer, rationale, used
        trace.seconds = time.perf_counter() - start
        return ReasoningResult(answer, rationale, used, trace)

    def _first_look(self, tool, trace: Trace, start: float) -> list | None:
        """Call ``tool`` (no arguments) before the model; the call and its result, as the model's history.
        ``None`` when it overran the time budget (the trace then says so)."""
        t0 = time.perf_counter()
        try:
            message = run_with_deadline(
                lambda: tool.invoke(_call(tool.name, {})), self.limits.time_budget_s - (t0 - start)
            )
        except TimeoutError:
            _stop_for_time(trace, start, self.limits.time_budget_s, tool.name)
            return None
        trace.steps.append(_tool_step(message, tool.name, {}, t0 - start, time.perf_counter() - t0))
        return [AIMessage("", tool_calls=[{"name": tool.name, "args": {}, "id": message.tool_call_id}]), message]

    def _rule_answer(self, image: ImageSource, question: str, trace: Trace, start: float) -> ReasoningResult | None:
        detector = self.toolbox.detector
        if detector is None:
            return None
        matched = rules.match_question(question, detector.names.values())
        if matched is None:
            return None
        tool = next(t for t in self.toolbox.tools_for(image) if t.name == "detect_objects")
        t0 = time.perf_counter()
        try:
            message = run_with_deadline(
                lambda: tool.invoke(_call("detect_objects", {"labels": [matched.label]})),
                self.limits.time_budget_s - (t0 - start),
            )
        except TimeoutError:
            trace.mode = "rule"
            _stop_for_time(trace, start, self.limits.time_budget_s, "detect_objects")
            return ReasoningResult(trace.answer, None, [], trace)
        step = _tool_step(message, "detect_objects", {"labels": [matched.label]}, t0 - start, time.perf_counter() - t0)
        trace.steps.append(step)
        if step.error:  # the LLM would only be told the same failure: say it now, without model time
            raise ExpertRunError(
                f"the {matched.kind} rule could not run the detector: {step.error.removeprefix('error: ')}"
            )
        count = sum(1 for d in step.evidence["items"] if d["label"] == matched.label)
        answer, rationale = rules.answer(matched, count)
        trace.steps.append(
            Step("rule", time.perf_counter() - start, 0.0, content=f"{matched.kind} rule for {matched.label!r}")
        )
        trace.mode, trace.answer, trace.rationale, trace.evidence_used = "rule", answer, rationale, ["detect_objects"]
        trace.seconds = time.perf_counter() - start
        return ReasoningResult(answer, rationale, ["detect_objects"], trace)


@dataclass
class ModelQuirks:
    """What the planner learned about its model's server, kept across runs."""

    refuses_forced_choice: bool = False


class _Guard(AgentMiddleware):
    """Limits, tool allow-list, error feedback and tracing around every model and tool call."""

    def __init__(
        self,
        trace: Trace,
        limits: PlannerLimits,
        allowed: set[str],
        start: float,
        look_first: str | None,
        quirks: ModelQuirks | None = None,
        model_name: str = "chat model",
    ) -> None:
        super().__init__()
        # look_first: the tool_choice of the first model call ("any" or a tool name); None = the model decides
        self.trace, self.limits, self.allowed, self.start, self.look_first = trace, limits, allowed, start, look_first
        self.quirks, self.model_name = quirks or ModelQuirks(), model_name
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

    def wrap_model_call(self, request: ModelRequest, handler) -> ModelResponse:
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
            request = request.override(tools=[], messages=[*request.messages, HumanMessage(ANSWER_NOW)])
        elif request.messages and isinstance(request.messages[-1], ToolMessage):
            reminder = restated(self.trace.question)
            request = request.override(messages=[*request.messages, HumanMessage(reminder)])
        elif model_calls == 0 and self.look_first and request.tools:
            # The model cannot see the image: its first move must be to look (small models otherwise guess).
            if self.quirks.refuses_forced_choice:
                request = _ask_for_a_call(request)
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
            request = request.override(tools=[], messages=[*request.messages, HumanMessage(ANSWER_FROM_EVIDENCE)])
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
        if len(_text(message)) > self.limits.max_reply_chars:  # a model that ignored (or has no) reply cap
            message, note = _cut(message, self.limits.max_reply_chars)
            result = list(response.result)
            result[replies[-1]] = message
            response = ModelResponse(result=result, structured_response=response.structured_response)
        usage = message.usage_metadata or {}
        prompt_chars = len(request.system_prompt or "") + sum(len(_text(m)) for m in request.messages)
        inputs = usage.get("input_tokens", prompt_chars // 4)  # ~4 characters a token when the model won't say
        outputs = usage.get("output_tokens", len(_text(message)) // 4)
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
                content=_text(message),
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
        """``handler(request)`` within the time left (``TimeoutError`` past it); a refused forced tool choice
        is retried once with ``auto``; any other failure of the model or its server is one ChatModelError."""
        try:
            return run_with_deadline(lambda: handler(request), self._remaining())
        except (ExpertBridgeError, TimeoutError):
            raise
        except Exception as err:  # noqa: BLE001 - whatever the provider raises, the user gets one clear line
            if not (_is_forced(request.tool_choice) and refuses_forced_choice(err)):
                raise model_failure(self.model_name, err) from err
            self.quirks.refuses_forced_choice = True
            self.trace.steps.append(
                Step(
                    "retry",
                    self._elapsed(),
                    0.0,
                    content=f"the server refused tool_choice={request.tool_choice!r} ({_first_line(err)}); "
                    "asked again with tool_choice='auto' and an instruction to call a tool",
                )
            )
        try:
            return run_with_deadline(lambda: handler(_ask_for_a_call(request)), self._remaining())
        except (ExpertBridgeError, TimeoutError):
            raise
        except Exception as err:  # noqa: BLE001
            raise model_failure(self.model_name, err) from err

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
        self.trace.steps.append(_tool_step(message, name, args, t0 - self.start, time.perf_counter() - t0))
        return message


def is_yes_no(question: str) -> bool:
    """Does ``question`` ask for yes or no ("is there not a dog?"), rather than a value or a choice ("a cat or a
    dog?")? English only: it opens with an auxiliary verb and offers no alternatives."""
    return bool(_YES_NO.match(question)) and not re.search(r"\bor\b", question, re.I)


def restated(question: str) -> str:
    """The reminder sent after tool results: the question again, with the yes/no hint when it applies."""
    return RESTATE_QUESTION.format(question=question) + (YES_NO_HINT if is_yes_no(question) else "")


def _stop_for_time(trace: Trace, start: float, budget: float, tool: str) -> None:
    """Record that ``tool``, called by the planner itself, overran the time budget and ended the run."""
    elapsed = time.perf_counter() - start
    reason = f"time budget of {budget:g}s exceeded: tool {tool!r} was still running at {elapsed:.1f}s"
    trace.steps.append(Step("limit", elapsed, 0.0, content=reason))
    trace.stopped_by, trace.seconds, trace.answer = reason, elapsed, f"(no answer: {reason})"


def run_with_deadline(fn: Callable[[], T], seconds: float) -> T:
    """``fn()``, or ``TimeoutError`` once ``seconds`` have passed without it returning.

    ``fn`` runs in a daemon thread (with this thread's context variables, which LangChain's
    callbacks use). Python cannot stop a thread: an overrunning call is *abandoned*, it finishes
    in the background and its result is dropped, and it never holds up the process's exit.
    """
    if seconds <= 0:
        raise TimeoutError("no time left")
    outcome: dict[str, Any] = {}
    finished = threading.Event()
    context = contextvars.copy_context()

    def target() -> None:
        try:
            outcome["value"] = context.run(fn)
        except BaseException as err:  # noqa: BLE001 - handed to the caller below
            outcome["error"] = err
        finally:
            finished.set()

    threading.Thread(target=target, name="planner-call", daemon=True).start()
    if not finished.wait(min(seconds, threading.TIMEOUT_MAX)):
        raise TimeoutError(f"still running after {seconds:.1f}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _cut(message: AIMessage, limit: int) -> tuple[AIMessage, str]:
    """The reply with its text cut to ``limit`` characters (head and tail kept, so a final ``Answer:`` line
    survives), and the note saying so."""
    text = _text(message)
    marker = f"\n[… {len(text) - limit:,} characters cut …]\n"
    head = max(0, (limit - len(marker)) // 2)
    tail = max(0, limit - len(marker) - head)
    cut = text[:head] + marker + (text[-tail:] if tail else "")
    note = f"reply of {len(text):,} characters cut to {len(cut):,} (max_reply_chars={limit})"
    return message.model_copy(update={"content": cut}), note


def _last_ai(response: ModelResponse) -> AIMessage:
    return next((m for m in reversed(response.result) if isinstance(m, AIMessage)), AIMessage(""))


def _is_forced(tool_choice: Any) -> bool:
    return tool_choice not in (None, False, "auto", "none")


def _ask_for_a_call(request: ModelRequest) -> ModelRequest:
    """The request without a forced choice, with an instruction to call a tool instead."""
    return request.override(tool_choice="auto", messages=[*request.messages, HumanMessage(CALL_A_TOOL)])


def refuses_forced_choice(err: BaseException) -> bool:
    """Does ``err`` look like a server rejecting a forced ``tool_choice`` (rather than being down)?

    An HTTP error answer (400, 422, 500, 501: what llama-cpp-python, vLLM and TGI send) or an
    error that names ``tool_choice``; never a connection failure or a timeout.
    """
    status = getattr(err, "status_code", None) or getattr(getattr(err, "response", None), "status_code", None)
    if status in (400, 422, 500, 501):
        return True
    return "tool_choice" in str(err) and not _is_connection_error(err)


def model_failure(model_name: str, err: BaseException) -> ChatModelError:
    """One line for the user: which model failed, why, and what to try."""
    status = getattr(err, "status_code", None) or getattr(getattr(err, "response", None), "status_code", None)
    if _is_connection_error(err):
        hint = "is the server running and reachable at the base URL? (or use a local model: --model auto)"
    elif "timeout" in type(err).__name__.lower() or "timed out" in str(err).lower():
        hint = "the server did not answer in time; try a smaller model or a longer timeout"
    elif status in (401, 403):
        hint = "check the API key (OPENAI_API_KEY or the provider's key variable)"
    elif status == 404:
        hint = "check the model name and the base URL (it usually ends in /v1)"
    elif isinstance(status, int) and status >= 500:
        hint = "the server failed on this request; its log says why"
    else:
        hint = "check the --model spec, or try another model"
    code = f"HTTP {status} " if isinstance(status, int) else ""
    return ChatModelError(f"chat model {model_name} failed: {code}{type(err).__name__}: {_first_line(err)} — {hint}")


def _is_connection_error(err: BaseException) -> bool:
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        name = type(e).__name__
        if isinstance(e, ConnectionError) or "Connect" in name or "ConnectionError" in name:
            return True
        e = e.__cause__ or e.__context__
    return False


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= 300 else line[:300] + "…"


def _tool_step(message: ToolMessage, name: str, args: dict, started: float, seconds: float) -> Step:
    artifact = message.artifact if isinstance(message.artifact, dict) else {}
    text = _text(message)
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


_FIELD = re.compile(r"^\s*\**(reasoning|rationale|answer|evidence)\**\s*[:：]\s*(.*)$", re.I)
#: "… so a dog is absent. Answer: yes" on one line: small models often run the fields together.
_INLINE_FIELD = re.compile(r"\s+\**(Answer|Evidence)\**\s*[:：]")


def parse_answer(text: str) -> tuple[str | None, str | None, list[str]]:
    """(answer, rationale, cited tools) from the model's final message.

    The expected format is ``Reasoning: … / Answer: … / Evidence: …``; a reply without an
    ``Answer:`` line is taken whole as the answer (small models often skip the format).
    """
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.S)
    text = re.sub(r"</?tool_response>", "", text).strip()  # small models echo the tool-result wrapper
    text = _INLINE_FIELD.sub(lambda m: f"\n{m.group(1)}:", text)
    fields: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        m = _FIELD.match(line)
        if m:
            current = {"rationale": "reasoning"}.get(m.group(1).lower(), m.group(1).lower())
            fields.setdefault(current, []).append(m.group(2).strip())
        elif current is not None and line.strip():
            fields[current].append(line.strip())
    answer = " ".join(fields.get("answer", [])).strip() or None
    rationale = " ".join(fields.get("reasoning", [])).strip() or None
    if answer is None and text:
        answer = text if len(text) <= 500 else text[:500] + "…"
    cited = [c.strip() for c in ",".join(fields.get("evidence", [])).split(",") if c.strip()]
    return answer, rationale, cited


def _evidence_used(cited: list[str], trace: Trace) -> list[str]:
    """The cited tools that really answered; if none is cited, every tool that answered (never invented)."""
    answered = [s.tool for s in trace.tool_steps if s.error is None]
    named = [t for t in answered if any(t in c for c in cited)]
    return sorted(set(named or answered))


def _text(message) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)


def _call(name: str, args: dict) -> dict:
    return {"type": "tool_call", "name": name, "args": args, "id": f"rule-{name}"}


def _describe(image: ImageSource) -> str:
    return str(image) if isinstance(image, (str,)) or hasattr(image, "__fspath__") else f"<{type(image).__name__}>"
