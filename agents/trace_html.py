"""A reasoning trace as one self-contained HTML page: the image with drawn boxes, then every step.

Path("trace.html").write_text(trace_to_html(result.trace, image="bus.jpg"))
"""

from __future__ import annotations

import base64
import io
import json

from jinja2 import Environment, PackageLoader, StrictUndefined

from agents.trace import Trace
from experts.drawing import draw_boxes
from experts.evidence import evidence_from_dict
from experts.images import ImageSource, load_image

# The page's markup lives in templates/trace.html.j2 (package data); autoescape is on, so every trace
# field (model text, tool output, a trace read back from JSON) is escaped without a call per field.
_TEMPLATES = Environment(
    loader=PackageLoader("agents", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    keep_trailing_newline=False,
)
# json.dumps as plain text (jinja's own `tojson` marks its output safe and rewrites <, >, &, ' as \u escapes)
_TEMPLATES.filters["tojson_text"] = json.dumps


def trace_to_html(trace: Trace, image: ImageSource | None = None) -> str:
    """The page: question, answer, time split, the image with every detected box, and each step in order.

    >>> page = trace_to_html(Trace(question="<b>how many?</b>", image="x.jpg", model="m"))
    >>> "&lt;b&gt;how many?&lt;/b&gt;" in page and "<b>how many?" not in page
    True
    """
    return _TEMPLATES.get_template("trace.html.j2").render(
        trace=trace,
        label=answer_label(trace),
        answer_class=_answer_class(trace),
        split=trace.time_split(),
        picture=_picture(trace, image),
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
