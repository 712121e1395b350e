"""The chain-of-thought planner: an LLM that calls experts as tools and reasons to an answer.

    planner = Planner(create_chat_model("local"), ExpertToolbox(detector=yolo))
    result = planner.run("bus.jpg", "How many people are in the image?")
    result.answer, result.rationale, result.evidence_used
    result.trace.to_json()                      # every model and tool call, with timings

Built on LangChain's ``create_agent`` (a LangGraph tool loop), built once per planner and
reused for every question: the image and the run's own guard travel in each run's context.
The guard (:mod:`agents.guard`) does three jobs at the two places where the loop calls out:

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
500; some vLLM/TGI configurations 400): the guard then asks again with the lone tool named,
or with ``"auto"`` plus an instruction to call a tool, notes the retry in the trace, and
skips forcing for the rest of the planner's life. A server refusing tool calls and results
in the history (that same server) gets them as text from then on. Any other failure of the
model or its server becomes one :class:`~experts.errors.ChatModelError` saying which model
failed, why, and what to try.

With ``rules=True``, counting and presence questions about detector classes are answered
without the LLM (see :mod:`agents.rules`), and the trace says so (``mode="rule"``).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import BaseTool

from agents import rules
from agents.answers import evidence_used, parse_answer, text_of
from agents.chat.factory import model_note
from agents.deadline import run_with_deadline
from agents.guard import GuardMiddleware, GuardTexts, ModelQuirks, RunContext, RunGuard, tool_step
from agents.model_errors import model_failure, refuses_forced_choice
from agents.tools import ExpertToolbox, call_tool
from agents.trace import Step, Trace
from experts.errors import ExpertRunError
from experts.images import ImageSource

# Re-exported: they lived here before the guard, the answer parsing and the model errors had modules.
__all__ = [
    "ANSWER_FROM_EVIDENCE",
    "ANSWER_NOW",
    "CALL_A_TOOL",
    "RESTATE_QUESTION",
    "SYSTEM_PROMPT",
    "YES_NO_HINT",
    "ModelQuirks",
    "Planner",
    "PlannerLimits",
    "ReasoningResult",
    "is_yes_no",
    "model_failure",
    "parse_answer",
    "refuses_forced_choice",
    "restated",
    "run_with_deadline",
]

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
    """Answers a question about an image with a chat model that calls the toolbox's experts.

    The tools and the agent graph are made once, on first use, and serve every question: the
    image and the run's guard (its trace, budgets and counters) travel in each run's context.
    """

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
        self._tools: list[BaseTool] | None = None
        self._agent: Any = None
        self._building = threading.Lock()  # two threads asking first build one graph

    @property
    def model_name(self) -> str:
        params = getattr(self.model, "_identifying_params", {}) or {}
        name = params.get("model") or params.get("model_name") or getattr(self.model, "model", None)
        return f"{self.model._llm_type}:{name}" if name else self.model._llm_type

    @property
    def tools(self) -> list[BaseTool]:
        """The toolbox's tools, made on first use (the image comes with each call, not with the tools)."""
        if self._tools is None:
            with self._building:
                if self._tools is None:
                    self._tools = list(self.toolbox.tools)
        return self._tools

    @property
    def agent(self) -> Any:
        """The agent graph (LangChain ``create_agent``), built on first use and reused for every question."""
        if self._agent is None:
            tools = self.tools
            with self._building:
                if self._agent is None:
                    self._agent = create_agent(
                        self.model,
                        tools,
                        system_prompt=self.system_prompt,
                        middleware=[GuardMiddleware()],
                        context_schema=RunContext,
                    )
        return self._agent

    def run(self, image: ImageSource, question: str) -> ReasoningResult:
        start = time.perf_counter()
        trace = Trace(
            question=question, image=_describe(image), model=self.model_name, model_note=model_note(self.model)
        )
        if self.rules:
            result = self._rule_answer(image, question, trace, start)
            if result is not None:
                return result
        tools = self.tools
        first = next((t for t in tools if t.name == self.first_tool), None)
        if first is None and self.look_first and self.call_lone_tool and len(tools) == 1 and not tools[0].args:
            # A forced choice among one tool without arguments leaves the model nothing to decide:
            # calling it ourselves saves a model call (about 3 s of Qwen2.5-1.5B on 2 cores).
            first = tools[0]
        look = "any" if self.look_first else None
        texts = GuardTexts(ANSWER_NOW, ANSWER_FROM_EVIDENCE, CALL_A_TOOL, restated)
        allowed = {t.name for t in tools}
        guard = RunGuard(trace, self.limits, allowed, start, look, self.quirks, self.model_name, texts=texts)
        messages: list = [HumanMessage(question)]
        if first is not None and not first.args:
            opening = self._first_look(first, image, trace, start)
            if opening is None:  # the tool overran the time budget: the run is over
                return ReasoningResult(trace.answer, None, [], trace)
            messages += opening
            guard.tool_calls, guard.look_first = 1, None
        elif first is not None and self.look_first:
            guard.look_first = first.name
        steps = self.limits.max_model_calls + self.limits.max_tool_calls
        state = self.agent.invoke(
            {"messages": messages},
            config={"recursion_limit": 2 * steps + 8},
            context=RunContext(image=image, guard=guard),
        )
        final = next((m for m in reversed(state["messages"]) if isinstance(m, AIMessage)), None)
        text = text_of(final) if final is not None else ""
        answer, rationale, cited = parse_answer(text)
        used = evidence_used(cited, trace)
        trace.answer, trace.rationale, trace.evidence_used = answer, rationale, used
        trace.seconds = time.perf_counter() - start
        return ReasoningResult(answer, rationale, used, trace)

    def _first_look(self, tool: BaseTool, image: ImageSource, trace: Trace, start: float) -> list | None:
        """Call ``tool`` (no arguments) before the model; the call and its result, as the model's history.
        ``None`` when it overran the time budget (the trace then says so)."""
        t0 = time.perf_counter()
        try:
            message = run_with_deadline(
                lambda: call_tool(tool, image, call_id=f"rule-{tool.name}"), self.limits.time_budget_s - (t0 - start)
            )
        except TimeoutError:
            _stop_for_time(trace, start, self.limits.time_budget_s, tool.name)
            return None
        trace.steps.append(tool_step(message, tool.name, {}, t0 - start, time.perf_counter() - t0))
        return [AIMessage("", tool_calls=[{"name": tool.name, "args": {}, "id": message.tool_call_id}]), message]

    def _rule_answer(self, image: ImageSource, question: str, trace: Trace, start: float) -> ReasoningResult | None:
        detector = self.toolbox.detector
        if detector is None:
            return None
        matched = rules.match_question(question, detector.names.values())
        if matched is None:
            return None
        tool = next(t for t in self.tools if t.name == "detect_objects")
        args = {"labels": [matched.label]}
        t0 = time.perf_counter()
        try:
            message = run_with_deadline(
                lambda: call_tool(tool, image, args, call_id="rule-detect_objects"),
                self.limits.time_budget_s - (t0 - start),
            )
        except TimeoutError:
            trace.mode = "rule"
            _stop_for_time(trace, start, self.limits.time_budget_s, "detect_objects")
            return ReasoningResult(trace.answer, None, [], trace)
        step = tool_step(message, "detect_objects", args, t0 - start, time.perf_counter() - t0)
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


def _describe(image: ImageSource) -> str:
    return str(image) if isinstance(image, (str,)) or hasattr(image, "__fspath__") else f"<{type(image).__name__}>"
