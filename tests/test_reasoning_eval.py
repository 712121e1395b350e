"""The reasoning benchmark's parts: easy-VQA questions and sampling, the tool-only program, answer
normalization, scoring, the report, and the colour-histogram expert."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from PIL import Image, ImageDraw

from agents.chat import ScriptedChatModel
from agents.planner import Planner
from agents.tools import ExpertToolbox, call_tool
from experts import create_expert
from experts.errors import ConfigError
from workflows import easy_vqa
from workflows.reasoning_eval import EvalItem, normalize_answer, report_html, run_planner, run_program, summarize
from workflows.vqa import read_vqa


def test_question_kinds_follow_the_templates():
    assert easy_vqa.question_kind("what shape is in the image?") == "shape"
    assert easy_vqa.question_kind("what is the red shape?") == "shape"
    assert easy_vqa.question_kind("what color is the triangle?") == "color"
    assert easy_vqa.question_kind("is a circle present?") == "presence"
    assert easy_vqa.question_kind("is no circle present?") == "negated"
    assert easy_vqa.question_kind("does the image not contain a gray shape?") == "negated"


def test_the_sample_is_stratified_and_fixed_by_its_seed():
    sample = easy_vqa.stratified_sample(42, seed=3)
    assert collections.Counter(q.kind for q in sample) == {"shape": 11, "color": 11, "presence": 10, "negated": 10}
    assert sample == easy_vqa.stratified_sample(42, seed=3)
    assert sample != easy_vqa.stratified_sample(42, seed=4)
    assert all(q.answer in q.choices for q in sample)
    with pytest.raises(ConfigError):
        easy_vqa.stratified_sample(3)


def test_a_balanced_sample_has_as_many_yes_as_no_answers_per_yes_no_kind():
    # easy-VQA's own mix is ~82 % "no" (presence) / "yes" (negated): a bridge trained on it answered by the prior
    plain = easy_vqa.stratified_sample(400, seed=2, split="train")
    assert collections.Counter(q.answer for q in plain if q.kind == "presence")["no"] > 70
    sample = easy_vqa.stratified_sample(402, seed=2, split="train", balance_answers=True)
    counts = collections.Counter((q.kind, q.answer) for q in sample if q.kind in ("presence", "negated"))
    assert counts == {("presence", "yes"): 50, ("presence", "no"): 50, ("negated", "yes"): 50, ("negated", "no"): 50}
    assert collections.Counter(q.kind for q in sample)["shape"] == 101  # the other kinds are drawn as before
    assert [(p.kind, p.answer) for p in read_vqa("easy-vqa:train:402:balanced", seed=2)] == [
        (q.kind, q.answer) for q in sample
    ]
    with pytest.raises(ConfigError):
        read_vqa("easy-vqa:train:40:even")


def test_the_tool_only_program_answers_every_test_question_right_from_the_true_labels():
    """Given perfect classifiers the program is perfect: its ceiling is only ever the tools'."""
    truth = easy_vqa.image_attributes("test")
    checked = 0
    for q in easy_vqa.load_questions("test")[:3000]:
        attrs = truth.get(q.image_id, {})
        if len(attrs) == 2:
            assert easy_vqa.tool_only_answer(q.question, shape=attrs["shape"], color=attrs["color"]) == q.answer
            checked += 1
    assert checked > 1500


def test_attribute_sets_are_disjoint_labelled_train_images():
    support = easy_vqa.attribute_set("color", shots=4, seed=0)
    val = easy_vqa.attribute_set("color", shots=4, seed=0, skip=4)
    assert support.classnames == easy_vqa.COLORS and len(support) == 32
    assert collections.Counter(support.labels) == dict.fromkeys(range(8), 4)
    assert not set(support.paths) & set(val.paths)
    assert all("/train/" in p for p in support.paths)


@pytest.mark.parametrize(
    ("text", "choices", "expected"),
    [
        ("Reasoning: ...\nYes, there is a red shape.", ("yes", "no"), "yes"),
        ("No. The shape is blue.", ("yes", "no"), "no"),
        ("The classifier says True", ("yes", "no"), "yes"),
        ("The shape is a circle.", easy_vqa.SHAPES, "circle"),
        ("It is grey.", easy_vqa.COLORS, "gray"),
        ("There are four people.", ("count",), "4"),
        ("2 ties", ("count",), "2"),
        ("These are ants.", ("ant", "bee"), "ant"),
        ("I cannot tell.", ("yes", "no"), None),
        ("", easy_vqa.SHAPES, None),
        (None, ("count",), None),
    ],
)
def test_answers_are_mapped_onto_the_choices(text, choices, expected):
    assert normalize_answer(text, choices) == expected


def item(question="is there a red shape?", answer="yes", kind="presence", choices=("yes", "no")):
    return EvalItem("img.png", question, answer, kind, choices)


def test_scores_calls_times_and_unparseable_answers_are_summarized():
    steps = []
    for reply in ("Answer: yes", "Answer: no", "Answer: maybe"):
        steps += [{"tool": "classify_few_shot", "args": {}}, reply]
    model = ScriptedChatModel(steps=steps)

    class Always:
        classnames = ("red", "blue")

        def predict(self, images):
            from types import SimpleNamespace

            return [SimpleNamespace(label="red", probabilities={"red": 0.9, "blue": 0.1}, error=None) for _ in images]

    rows = run_planner(Planner(model, ExpertToolbox(classifier=Always())), [item(), item(), item()])
    assert [(r.predicted, r.correct) for r in rows] == [("yes", True), ("no", False), (None, False)]
    s = summarize(rows)
    assert s["accuracy"] == pytest.approx(1 / 3) and s["unparseable"] == pytest.approx(1 / 3)
    assert s["model_calls"] == 2 and s["tool_calls"] == 1 and s["per_kind"] == {"presence": pytest.approx(1 / 3)}
    ceiling = run_program(lambda it: "yes", [item(), item(answer="no")])
    assert summarize(ceiling)["accuracy"] == 0.5

    page = report_html({"set": {"scripted": rows, "tool-only": ceiling}}, title="t")
    assert page.count("<tr>") == 3 and "33.3%" in page and "sample traces" in page


def shape_image(color: tuple[int, int, int], background=(238, 250, 245), box=(10, 12, 40, 44)) -> Image.Image:
    image = Image.new("RGB", (64, 64), background)
    ImageDraw.Draw(image).ellipse(box, fill=color)
    return image


def test_color_histogram_sees_the_shape_not_the_background():
    expert = create_expert("color_histogram", device="cpu")
    red, brown = shape_image((255, 0, 0)), shape_image((165, 42, 42), background=(250, 240, 230))
    small_red = shape_image((255, 0, 0), box=(50, 50, 60, 60))
    f = [r.evidence.vector for r in expert.run([red, brown, small_red])]
    assert f[0].shape == (64,) and np.isclose(np.linalg.norm(f[0]), 1.0)
    assert int(np.argmax(f[0])) == (3 * 4 + 0) * 4 + 0  # R bin 3, G bin 0, B bin 0: pure red
    assert int(np.argmax(f[1])) == (2 * 4 + 0) * 4 + 0  # brown: R bin 2
    assert float(f[0] @ f[2]) > 0.99  # size and position do not matter, the background does not count
    assert float(f[0] @ f[1]) < 0.2
    assert expert.identity == {
        "expert": "color_histogram",
        "weights": "fixed",
        "config": {"normalize": True, "bins": 4, "threshold": 48, "size": 64},
    }
    with pytest.raises(ConfigError):
        create_expert("color_histogram", bins=1)


def test_classify_few_shot_states_every_classifier_and_never_names_a_ruled_out_label():
    from types import SimpleNamespace

    class Fixed:
        def __init__(self, probabilities):
            self.classnames, self.probabilities = tuple(probabilities), probabilities

        def predict(self, images):
            top = max(self.probabilities, key=self.probabilities.get)
            return [SimpleNamespace(label=top, probabilities=self.probabilities, error=None) for _ in images]

    toolbox = ExpertToolbox(
        classifiers={
            "shape": Fixed({"circle": 0.90, "rectangle": 0.08, "triangle": 0.02}),
            "color": Fixed({"blue": 0.004, "red": 0.99, "teal": 0.006}),
        }
    )
    (tool,) = toolbox.tools
    assert tool.name == "classify_few_shot" and tool.args == {}
    assert "shape (circle, rectangle, triangle); color (blue, red, teal)" in tool.description
    message = call_tool(tool, "x.png")
    assert message.content == "The shape is circle (0.90); it may also be rectangle (0.08).\nThe color is red."
    assert "blue" not in message.content  # a colour ruled out is never named: small models read it as present
    evidence = message.artifact["evidence"]
    assert evidence["type"] == "few_shot" and evidence["classifiers"]["color"]["labels"][0] == "red"


def test_report_thumbnails_are_png_data_uris_and_an_unreadable_image_gives_none(tmp_path):
    import base64
    import io

    from PIL import Image

    from workflows.thumbnails import thumbnail_uri

    Image.new("RGB", (300, 150), "red").save(tmp_path / "wide.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    uri = thumbnail_uri(str(tmp_path / "wide.png"))
    assert uri.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as small:
        assert small.size == (96, 48) and small.getpixel((10, 10)) == (255, 0, 0)
    assert thumbnail_uri(str(tmp_path / "broken.png")) == "" and thumbnail_uri(str(tmp_path / "none.png")) == ""


def test_hostile_text_is_escaped_in_the_report_and_in_its_trace_pages(tmp_path):
    import base64
    import re

    from agents.trace import Trace
    from agents.trace_html import trace_to_html
    from workflows.reasoning_eval import EvalRow

    evil = '<script>alert(1)</script> x" onmouseover="alert(2)\' y'
    trace = {
        "question": evil,
        "image": evil,
        "model": evil,
        "answer": evil,
        "steps": [{"kind": "tool", "started": 0, "seconds": 0, "tool": "detect_objects", "output": evil}],
    }
    row = EvalRow(
        EvalItem(str(tmp_path / "none.png"), evil, "yes", evil, ("yes", "no")), evil, None, False, 1.0, trace=trace
    )
    report = report_html({evil: {evil: [row]}}, title=evil, notes=[evil])
    pages = [base64.b64decode(p).decode() for p in re.findall(r"data:text/html;base64,([A-Za-z0-9+/=]+)", report)]
    assert len(pages) == 1
    for page in (report, pages[0], trace_to_html(Trace.from_dict(trace))):
        assert "<script>" not in page and '" onmouseover="' not in page and "' y" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert report.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 6  # title, note, set, kind, run, question, answer
    assert pages[0].count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 4  # question, model, answer, tool output


def test_the_page_templates_ship_in_the_wheel():
    from fnmatch import fnmatch
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = Path(__file__).resolve().parents[1]
    package_data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    templates = [p.relative_to(root) for p in root.glob("*/templates/*") if p.is_file()]
    assert templates
    for path in templates:
        package, inside = path.parts[0], "/".join(path.parts[1:])
        assert any(fnmatch(inside, pattern) for pattern in package_data.get(package, ())), path
