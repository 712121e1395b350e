"""The trace of one reasoning run: every model call and every tool call, in order, JSON-serializable.

    result = planner.run("bus.jpg", "How many people are there?")
    result.trace.steps[1].tool          # 'detect_objects'
    Path("trace.json").write_text(result.trace.to_json())

Raw evidence of each tool call is kept as a JSON dict (``evidence``) beside the text the
model saw (``output``), so a reader can check the model was told the truth.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

StepKind = Literal["model", "tool", "rule", "limit", "retry"]

_WORD = re.compile(r"[a-z]+|\d+(?:\.\d+)?")  # words and numbers (counts, scores) of a text


@dataclass
class Step:
    """One event. ``kind``: a model call, a tool call, a rule-based (no-LLM) answer, a limit that stopped
    the run, or a retry (the model's server refused a request, and how it was asked again)."""

    kind: StepKind
    started: float  # seconds since the run started
    seconds: float
    # model calls
    prompt_messages: int | None = None
    prompt_chars: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    # tool calls
    tool: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    output: str | None = None
    evidence: dict[str, Any] | None = None
    store_hits: int | None = None
    store_misses: int | None = None
    error: str | None = None
    note: str | None = None  # what the planner changed, e.g. a model reply cut to max_reply_chars

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, [], {})}


@dataclass
class Trace:
    """Question, image, steps and outcome of a run."""

    question: str
    image: str
    model: str
    mode: Literal["llm", "rule"] = "llm"
    model_note: str | None = None  # e.g. "a small demo model": shown beside the answer
    steps: list[Step] = field(default_factory=list)
    answer: str | None = None
    rationale: str | None = None
    evidence_used: list[str] = field(default_factory=list)
    stopped_by: str | None = None  # the limit that ended the run early, if any
    seconds: float = 0.0

    @property
    def tool_steps(self) -> list[Step]:
        return [s for s in self.steps if s.kind == "tool"]

    @property
    def model_steps(self) -> list[Step]:
        return [s for s in self.steps if s.kind == "model"]

    def time_split(self) -> dict[str, float]:
        """Seconds in the model, in tools, and in everything else (the framework)."""
        model = sum(s.seconds for s in self.model_steps)
        tools = sum(s.seconds for s in self.tool_steps)
        return {"model": model, "tools": tools, "framework": max(0.0, self.seconds - model - tools)}

    def echoes_tools(self) -> bool:
        """True when the model's answer is mostly words of the tool output: a repeat (small models do it),
        not a conclusion of its own, so it must not be shown as a confident answer."""
        if self.mode != "llm" or not self.answer:
            return False
        words = _WORD.findall(self.answer.lower())
        tool_words = set(_WORD.findall(" ".join(s.output or "" for s in self.tool_steps).lower()))
        return len(words) >= 4 and sum(w in tool_words for w in words) >= 0.7 * len(words)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps"] = [s.to_dict() for s in self.steps]
        data["time_split"] = self.time_split()
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trace:
        fields = {k: v for k, v in data.items() if k not in ("steps", "time_split")}
        return cls(**fields, steps=[Step(**s) for s in data.get("steps", [])])
