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
from html import escape
from typing import Any

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

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:.5em 0 1.5em} th,td{border:1px solid #ddd;padding:.3em .6em;text-align:right}
th:first-child,td:first-child{text-align:left} .ok{color:#282} .bad{color:#b22}
details{border:1px solid #ddd;border-radius:6px;margin:.4em 0;padding:.3em .7em} summary{cursor:pointer}
iframe{width:100%;height:520px;border:1px solid #ccc} img.thumb{width:48px;height:48px;vertical-align:middle}
.meta{color:#666;font-size:.9em}
"""


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
    """
    parts = [f"<h1>{escape(title)}</h1>"] + [f"<p class='meta'>{escape(n)}</p>" for n in notes]
    for set_name, by_run in runs.items():
        summaries = {name: summarize(rows) for name, rows in by_run.items()}
        kinds = sorted({k for s in summaries.values() for k in s.get("per_kind", {})})
        n = next((s["questions"] for s in summaries.values() if s.get("questions")), 0)
        parts.append(f"<h2>{escape(set_name)} — {n} questions</h2>")
        head = ["run", "accuracy", *kinds, "median s", "p90 s", "model calls/q", "tool calls/q", "unparseable"]
        table = ["<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
        for name, s in summaries.items():
            if not s.get("questions"):
                continue
            cells = [escape(name), f"{s['accuracy']:.1%}"]
            for k in kinds:
                share, n_kind = s["per_kind"].get(k, float("nan")), s["per_kind_n"].get(k, 0)
                cells.append(f"{share:.1%} <span class='meta'>({n_kind})</span>")
            cells += [
                f"{s['median_s']:.2f}",
                f"{s['p90_s']:.2f}",
                f"{s['model_calls']:.2f}",
                f"{s['tool_calls']:.2f}",
                f"{s['unparseable']:.1%}",
            ]
            table.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        parts.append("".join(table) + "</table>")
        for name, rows in by_run.items():
            traced = [r for r in rows if r.trace]
            if not traced:
                continue
            shown = ([r for r in traced if not r.correct] + [r for r in traced if r.correct])[:traces_per_run]
            parts.append(f"<h3>{escape(set_name)} · {escape(name)}: sample traces</h3>")
            parts += [_trace_block(r) for r in shown]
    body = "\n".join(parts)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def _trace_block(row: EvalRow) -> str:
    mark = "<span class='ok'>right</span>" if row.correct else "<span class='bad'>wrong</span>"
    summary = (
        f"{_thumb(row.item.image)} {escape(row.item.question)} → {escape(repr(row.raw))} "
        f"(gold {escape(row.item.answer)}; {mark}; {row.seconds:.1f}s, {row.model_calls} model / "
        f"{row.tool_calls} tool calls)"
    )
    page = trace_to_html(Trace.from_dict(row.trace), None) if row.trace else ""
    src = base64.b64encode(page.encode()).decode()
    return f"<details><summary>{summary}</summary><iframe src='data:text/html;base64,{src}'></iframe></details>"


def _thumb(image: str) -> str:
    uri = thumbnail_uri(image)
    return f"<img class='thumb' alt='' src='{uri}'>" if uri else ""


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
