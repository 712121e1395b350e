"""A reasoning trace as one self-contained HTML page: the image with drawn boxes, then every step.

Path("trace.html").write_text(trace_to_html(result.trace, image="bus.jpg"))
"""

from __future__ import annotations

import base64
import io
import json
from html import escape

from agents.trace import Step, Trace
from experts.drawing import draw_boxes
from experts.evidence import evidence_from_dict
from experts.images import ImageSource, load_image

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222;line-height:1.4}
h1{font-size:1.3em} .answer{background:#eef7ee;border-left:4px solid #4a4;padding:.6em 1em;margin:1em 0}
.answer.doubt{background:#fff8e6;border-left-color:#c90} .note{color:#850;font-size:.9em;margin-top:.4em}
.step{border:1px solid #ddd;border-radius:6px;margin:.6em 0;padding:.5em .8em}
.model{border-left:4px solid #57c} .tool{border-left:4px solid #c84} .rule{border-left:4px solid #4a4}
.limit{border-left:4px solid #c44} .error{background:#fff3f3}
.meta{color:#666;font-size:.85em} pre{white-space:pre-wrap;margin:.3em 0;font-size:.9em}
img{max-width:100%;border:1px solid #ccc} table{border-collapse:collapse} td{padding:0 1em 0 0}
"""


def trace_to_html(trace: Trace, image: ImageSource | None = None) -> str:
    """The page: question, answer, time split, the image with every detected box, and each step in order."""
    split = trace.time_split()
    parts = [
        f"<h1>{escape(trace.question)}</h1>",
        f'<div class="{_answer_class(trace)}"><b>{escape(answer_label(trace))}:</b> {escape(trace.answer or "(none)")}'
        + (f"<br><b>Rationale:</b> {escape(trace.rationale)}" if trace.rationale else "")
        + f"<br><b>Evidence used:</b> {escape(', '.join(trace.evidence_used) or '(none)')}"
        + (f'<div class="note">{escape(trace.model_note)}</div>' if trace.model_note else "")
        + "</div>",
        '<table class="meta">'
        f"<tr><td>model</td><td>{escape(trace.model)} (mode: {escape(trace.mode)})</td></tr>"
        f"<tr><td>time</td><td>{trace.seconds:.2f}s = model {split['model']:.2f}s + tools {split['tools']:.2f}s"
        f" + framework {split['framework']:.2f}s</td></tr>"
        + (f"<tr><td>stopped by</td><td>{escape(trace.stopped_by)}</td></tr>" if trace.stopped_by else "")
        + "</table>",
    ]
    picture = _picture(trace, image)
    if picture:
        parts.append(f'<p><img alt="the image with the detected boxes" src="data:image/png;base64,{picture}"></p>')
    parts.append("<h2>Steps</h2>")
    parts += [_step(i, s) for i, s in enumerate(trace.steps, 1)]
    body = "\n".join(parts)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>trace: {escape(trace.question)}</title>"
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def answer_label(trace: Trace) -> str:
    """Who answered, how, and how far to trust it: a rule's count, a model's answer, or a model's echo."""
    if trace.mode == "rule":
        return "Answer (rule, no LLM)"
    if trace.echoes_tools():
        return f"Reply of {trace.model} (repeats the tool output; not a checked answer)"
    if trace.model_note or not trace.evidence_used:
        return f"Unverified reply of {trace.model}"
    return f"Answer of {trace.model}"


def _answer_class(trace: Trace) -> str:
    return "answer" if answer_label(trace).startswith("Answer") else "answer doubt"


def _picture(trace: Trace, image: ImageSource | None) -> str | None:
    if image is None:
        return None
    try:
        picture = load_image(image).image
    except Exception:  # noqa: BLE001 - the page is still useful without the image
        return None
    for step in trace.tool_steps:
        if step.evidence and step.evidence.get("type") in ("detections", "region_captions"):
            picture = draw_boxes(picture, evidence_from_dict(step.evidence))
    picture.thumbnail((960, 960))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _step(i: int, step: Step) -> str:
    timing = f"at {step.started:.2f}s, took {step.seconds:.3f}s"
    error = " error" if step.error else ""
    if step.kind == "model":
        calls = "".join(f"<pre>→ {escape(c['name'])}({escape(json.dumps(c['args']))})</pre>" for c in step.tool_calls)
        meta = (
            f"{step.prompt_messages} messages, {step.prompt_chars} chars in; "
            f"{step.input_tokens} tokens in, {step.output_tokens} out; {timing}"
        )
        note = f'<p class="meta">note: {escape(step.note)}</p>' if step.note else ""
        return (
            f'<div class="step model"><b>{i}. model</b> <span class="meta">{meta}</span>{note}'
            f"<pre>{escape(step.content or '')}</pre>{calls}</div>"
        )
    if step.kind == "tool":
        store = ""
        if step.store_hits is not None:
            store = f"; store: {step.store_hits} hit, {step.store_misses} miss"
        return (
            f'<div class="step tool{error}"><b>{i}. tool {escape(step.tool or "")}</b>'
            f"<code>({escape(json.dumps(step.arguments))})</code> <span class='meta'>{timing}{store}</span>"
            f"<pre>{escape(step.output or '')}</pre></div>"
        )
    kind = escape(str(step.kind))  # a trace read back from JSON is text like any other
    return f'<div class="step {kind}"><b>{i}. {kind}</b> <pre>{escape(step.content or "")}</pre></div>'
