"""Measuring reasoning: questions with known answers → a planner (or a fixed program) → scores and a report.

    items = [EvalItem(image, "is there not a black shape?", "yes", "negated", ("yes", "no")), ...]
    rows = run_planner(planner, items)                 # one EvalRow per question, trace kept
    ceiling = run_program(lambda item: ..., items)     # a fixed program over the same tools
    summarize(rows)                                    # accuracy overall / per kind, s/question, calls, % unparseable
    Path("report.html").write_text(report_html({"qwen": rows, "tool-only": ceiling}, title="..."))

A model's answer is scored after :func:`normalize_answer` maps it onto the item's
choices (yes/no, a label, a count); an answer that maps onto none is *unparseable*
and counts as wrong. A question whose run fails (a model error, a limit) is wrong too,
with the error kept in its row.
"""

from __future__ import annotations

import base64
import json
import re
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from agents.planner import Planner
from agents.trace import Trace
from agents.trace_html import trace_to_html
from experts.errors import ExpertBridgeError
from workflows.thumbnails import thumbnail_uri

_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_SYNONYMS = {"grey": "gray", "ants": "ant", "bees": "bee", "true": "yes", "false": "no"}


@dataclass(frozen=True)
class EvalItem:
    """A question about an image with its gold answer; ``choices`` are the answers it admits
    (``("count",)`` for a number)."""

    image: str
    question: str
    answer: str
    kind: str
    choices: tuple[str, ...]
    note: str = ""


@dataclass
class EvalRow:
    """One question's outcome."""

    item: EvalItem
    raw: str | None
    predicted: str | None  # the raw answer mapped onto the choices; None = unparseable
    correct: bool
    seconds: float
    model_calls: int = 0
    tool_calls: int = 0
    error: str | None = None
    trace: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalize_answer(text: str | None, choices: Sequence[str]) -> str | None:
    """Map a free-text answer onto ``choices`` (the first choice word it contains), or None.

    ``("yes", "no")``: the first yes/no (or true/false) word; ``("count",)``: the first
    number, in digits or words; otherwise the first word that is one of the choices.
    """
    if not text:
        return None
    words = [_SYNONYMS.get(w, w) for w in re.findall(r"[a-z]+|\d+", text.lower())]
    if tuple(choices) == ("count",):
        for w in words:
            if w.isdigit():
                return str(int(w))
            if w in _NUMBER_WORDS:
                return str(_NUMBER_WORDS[w])
        return None
    wanted = {c.lower(): c for c in choices}
    for w in words:
        if w in wanted:
            return wanted[w]
    return None


def run_planner(
    planner: Planner, items: Sequence[EvalItem], *, progress: Callable[[int, EvalRow], None] | None = None
) -> list[EvalRow]:
    """Ask the planner every question; a failure is that question's wrong answer, never the end of the run."""
    rows = []
    for i, item in enumerate(items):
        started = time.perf_counter()
        try:
            result = planner.run(item.image, item.question)
        except ExpertBridgeError as err:
            row = EvalRow(item, None, None, False, time.perf_counter() - started, error=f"{type(err).__name__}: {err}")
        else:
            trace: Trace = result.trace
            predicted = normalize_answer(result.answer, item.choices)
            row = EvalRow(
                item,
                result.answer,
                predicted,
                predicted == item.answer,
                time.perf_counter() - started,
                model_calls=len(trace.model_steps),
                tool_calls=len(trace.tool_steps),
                error=trace.stopped_by,
                trace=trace.to_dict(),
            )
        rows.append(row)
        if progress is not None:
            progress(i, row)
    return rows


def run_program(program: Callable[[EvalItem], str], items: Iterable[EvalItem]) -> list[EvalRow]:
    """A fixed program's answers (e.g. straight from the tools' outputs), scored like a model's."""
    rows = []
    for item in items:
        started = time.perf_counter()
        try:
            raw = program(item)
        except ExpertBridgeError as err:
            rows.append(EvalRow(item, None, None, False, time.perf_counter() - started, error=str(err)))
            continue
        predicted = normalize_answer(raw, item.choices)
        rows.append(EvalRow(item, raw, predicted, predicted == item.answer, time.perf_counter() - started))
    return rows


def summarize(rows: Sequence[EvalRow]) -> dict[str, Any]:
    """Accuracy overall and per kind, seconds per question (median, p90), calls per question, % unparseable."""
    if not rows:
        return {"questions": 0}
    seconds = sorted(r.seconds for r in rows)
    kinds: dict[str, list[EvalRow]] = {}
    for r in rows:
        kinds.setdefault(r.item.kind, []).append(r)
    return {
        "questions": len(rows),
        "accuracy": sum(r.correct for r in rows) / len(rows),
        "per_kind": {k: sum(r.correct for r in rs) / len(rs) for k, rs in sorted(kinds.items())},
        "per_kind_n": {k: len(rs) for k, rs in sorted(kinds.items())},
        "median_s": statistics.median(seconds),
        "p90_s": seconds[min(len(seconds) - 1, int(0.9 * len(seconds)))],
        "model_calls": statistics.fmean(r.model_calls for r in rows),
        "tool_calls": statistics.fmean(r.tool_calls for r in rows),
        "unparseable": sum(r.predicted is None for r in rows) / len(rows),
        "errors": sum(r.error is not None for r in rows),
    }


# --------------------------------------------------------------------------- report

# The page's markup lives in templates/reasoning_report.html.j2 (package data). Autoescape is on: a
# question, a model's raw answer or a run name is text, however hostile; the code below only gathers and
# formats the values (the summary numbers are summarize()'s, unchanged).
_TEMPLATES = Environment(loader=PackageLoader("workflows", "templates"), autoescape=True, undefined=StrictUndefined)


def report_html(
    runs: Mapping[str, Mapping[str, Sequence[EvalRow]]],
    *,
    title: str,
    notes: Sequence[str] = (),
    traces_per_run: int = 4,
) -> str:
    """One page: per question set, a table of every run's summary, then sample traces of each run.

    ``runs`` is ``{question set: {run name: rows}}`` (e.g. ``{"easy-VQA": {"qwen-1.5b": rows, "tool-only": rows}}``).
    The traces shown are the first wrong answers (then the first right ones), each as its full trace page.

    >>> "&lt;i&gt;" in report_html({}, title="<i>")
    True
    """
    sets = []
    for set_name, by_run in runs.items():
        summaries = {name: summarize(rows) for name, rows in by_run.items()}
        kinds = sorted({k for s in summaries.values() for k in s.get("per_kind", {})})
        n = next((s["questions"] for s in summaries.values() if s.get("questions")), 0)
        table = [_summary_row(name, s, kinds) for name, s in summaries.items() if s.get("questions")]
        traces = []
        for name, rows in by_run.items():
            traced = [r for r in rows if r.trace]
            if traced:
                shown = ([r for r in traced if not r.correct] + [r for r in traced if r.correct])[:traces_per_run]
                traces.append({"run": name, "shown": [_trace_block(r) for r in shown]})
        head = ["run", "accuracy", *kinds, "median s", "p90 s", "model calls/q", "tool calls/q", "unparseable"]
        sets.append({"name": set_name, "questions": n, "head": head, "rows": table, "traces": traces})
    return _TEMPLATES.get_template("reasoning_report.html.j2").render(title=title, notes=list(notes), sets=sets)


def _summary_row(name: str, s: Mapping[str, Any], kinds: Sequence[str]) -> dict[str, Any]:
    return {
        "name": name,
        "accuracy": f"{s['accuracy']:.1%}",
        "kinds": [(f"{s['per_kind'].get(k, float('nan')):.1%}", s["per_kind_n"].get(k, 0)) for k in kinds],
        "timing": [
            f"{s['median_s']:.2f}",
            f"{s['p90_s']:.2f}",
            f"{s['model_calls']:.2f}",
            f"{s['tool_calls']:.2f}",
            f"{s['unparseable']:.1%}",
        ],
    }


def _trace_block(row: EvalRow) -> dict[str, Any]:
    page = trace_to_html(Trace.from_dict(row.trace), None) if row.trace else ""
    return {
        "thumb": thumbnail_uri(row.item.image),
        "question": row.item.question,
        "raw": repr(row.raw),
        "gold": row.item.answer,
        "correct": row.correct,
        "seconds": f"{row.seconds:.1f}",
        "model_calls": row.model_calls,
        "tool_calls": row.tool_calls,
        "page": base64.b64encode(page.encode()).decode(),
    }


def rows_to_json(runs: Mapping[str, Mapping[str, Sequence[EvalRow]]]) -> str:
    """Every row of every run (traces included) and each run's summary, as JSON."""
    data = {
        set_name: {
            name: {"summary": summarize(rows), "rows": [r.to_dict() for r in rows]} for name, rows in by_run.items()
        }
        for set_name, by_run in runs.items()
    }
    return json.dumps(data, indent=1, default=str)


__all__ = [
    "EvalItem",
    "EvalRow",
    "normalize_answer",
    "report_html",
    "rows_to_json",
    "run_planner",
    "run_program",
    "summarize",
]
