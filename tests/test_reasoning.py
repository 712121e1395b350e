"""Reasoning from Python and the shell: store reuse, the real local chat model end to end, `expertbridge ask`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from agents.chat import DEFAULT_LOCAL_MODEL, ScriptedChatModel
from cache.store import DirectoryStore
from experts import ConfigError, create_expert
from workflows.cli import app
from workflows.reasoning import Reasoner

pytestmark = pytest.mark.slow


def scripted(n_people: int) -> ScriptedChatModel:
    return ScriptedChatModel(
        steps=[
            {"tool": "detect_objects", "args": {"labels": ["person"]}},
            {"content": f"Reasoning: counted.\nAnswer: {n_people}\nEvidence: detect_objects"},
        ]
    )


def test_a_repeated_question_is_answered_from_the_store_without_a_forward_pass(yolo, bus_jpg, tmp_path, monkeypatch):
    people = yolo(bus_jpg).count("person")
    store = DirectoryStore(tmp_path / "store")
    first = Reasoner(model=scripted(people), experts={"yolo": yolo}, store=store).ask(bus_jpg, "How many people?")
    assert (first.trace.tool_steps[0].store_hits, first.trace.tool_steps[0].store_misses) == (0, 1)

    def no_forward(*args, **kwargs):
        raise AssertionError("the detector ran although its output is stored")

    monkeypatch.setattr(yolo, "predict", no_forward)
    again = Reasoner(model=scripted(people), experts={"yolo": yolo}, store=store).ask(bus_jpg, "How many people?")
    assert (again.trace.tool_steps[0].store_hits, again.trace.tool_steps[0].store_misses) == (1, 0)
    assert again.trace.tool_steps[0].output == first.trace.tool_steps[0].output
    assert again.answer == str(people)


def test_missing_image_and_unknown_tool_expert_are_clear_errors(yolo, tmp_path):
    reasoner = Reasoner(model=scripted(0), experts={"yolo": yolo}, store=None)
    with pytest.raises(ConfigError, match="does not exist"):
        reasoner.ask(tmp_path / "nope.jpg", "How many people?")
    # an expert's tool follows from the evidence it gives, not from its name
    assert Reasoner(model=scripted(0), experts={"detector": yolo}, store=None).toolbox.names == ["detect_objects"]
    with pytest.raises(ConfigError, match="gives features evidence, which no planner tool reads"):
        Reasoner(model=scripted(0), experts={"color_histogram": create_expert("color_histogram")}, store=None)
    with pytest.raises(ConfigError, match="are both a detector"):
        Reasoner(model=scripted(0), experts={"yolo": yolo, "yolo2": yolo}, store=None)


@pytest.fixture(scope="module")
def smollm(yolo):
    """The real offline chat model (SmolLM2-135M-Instruct, GGUF from PyPI), loaded once."""
    reasoner = Reasoner(model=DEFAULT_LOCAL_MODEL, experts={"yolo": yolo}, store=None)
    reasoner.model.load()
    return reasoner


def test_real_local_model_calls_the_detector_and_answers(smollm, yolo, bus_jpg):
    """SmolLM2-135M through the same path a bigger model takes: it looks first, then answers.

    A 135M model's wording varies, so the pins are on the trace: a real model call, a
    detect_objects call that ran the detector on bus.jpg, and an answer produced.
    """
    result = smollm.ask(bus_jpg, "How many people are in the image?")
    trace = result.trace
    assert trace.mode == "llm" and trace.model.startswith("local")
    assert trace.steps[0].kind == "model" and trace.steps[0].tool_calls[0]["name"] == "detect_objects"
    detect = [s for s in trace.tool_steps if s.tool == "detect_objects" and s.error is None]
    assert detect, trace.to_json()
    people = yolo(bus_jpg).count("person")
    assert sum(d["label"] == "person" for d in detect[0].evidence["items"]) == (
        people if not detect[0].arguments.get("labels") or "person" in detect[0].arguments["labels"] else 0
    )
    assert result.answer and result.answer.strip()
    assert all(s.input_tokens and s.output_tokens is not None for s in trace.model_steps)


def test_ask_command_writes_json_and_html_traces(tmp_path, bus_jpg, yolo_weights, monkeypatch):
    monkeypatch.setenv("EXPERTBRIDGE_YOLO_WEIGHTS", str(yolo_weights))
    monkeypatch.setenv("EXPERTBRIDGE_STORE_DIR", str(tmp_path / "store"))
    trace, html = tmp_path / "trace.json", tmp_path / "trace.html"
    res = CliRunner().invoke(
        app,
        ["ask", str(bus_jpg), "How many people are in the image?", "--rules", "--trace", str(trace)]
        + ["--html", str(html)],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(trace.read_text())
    assert data["mode"] == "rule" and data["answer"] == res.output.strip().splitlines()[-1]
    assert data["steps"][0]["tool"] == "detect_objects"
    assert "data:image/png;base64," in html.read_text()
