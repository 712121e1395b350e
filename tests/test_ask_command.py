"""`expertbridge ask`: an unusable image or model is an error before any model time, exit codes say
whether the reply rests on evidence, and the output names the model that answered."""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import ToolMessage
from langchain_core.tools import ToolException
from typer.testing import CliRunner

from agents.chat import DEFAULT_LOCAL_MODEL, ScriptedChatModel, create_chat_model
from agents.chat.factory import DEMO_MODEL_NOTE, model_note
from agents.planner import Planner
from agents.tools import ExpertToolbox
from agents.trace import Step, Trace
from agents.trace_html import answer_label, trace_to_html
from workflows.cli import app

runner = CliRunner()


@pytest.fixture
def ask_env(monkeypatch, tmp_path, yolo_weights):
    monkeypatch.setenv("EXPERTBRIDGE_YOLO_WEIGHTS", str(yolo_weights))
    monkeypatch.setenv("EXPERTBRIDGE_STORE_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("EXPERTBRIDGE_DEVICE", "cpu")
    monkeypatch.setenv("EXPERTBRIDGE_OFFLINE", "1")
    return tmp_path


def script(monkeypatch, *steps) -> ScriptedChatModel:
    """Make `ask` use a scripted model (an empty script fails the run if the model is ever called)."""
    model = ScriptedChatModel(steps=list(steps))
    monkeypatch.setattr("workflows.reasoning.create_chat_model", lambda spec, **kw: model)
    return model


def test_an_unreadable_image_fails_before_any_model_time(ask_env, monkeypatch):
    model = script(monkeypatch)
    broken = ask_env / "broken.jpg"
    broken.write_text("not an image")
    res = runner.invoke(app, ["ask", str(broken), "How many people?"])
    assert res.exit_code == 2, res.output
    assert "broken.jpg" in res.output and "Traceback" not in res.output
    assert model.calls == []


def test_a_url_is_kept_as_given_and_the_refusal_names_the_setting(ask_env, monkeypatch):
    script(monkeypatch)
    res = runner.invoke(app, ["ask", "https://ultralytics.com/images/bus.jpg", "How many people?"])
    assert res.exit_code == 2
    assert "https://ultralytics.com/images/bus.jpg" in res.output and "EXPERTBRIDGE_ALLOW_URLS=1" in res.output


def test_an_ollama_model_without_a_server_is_one_line_with_what_to_try(ask_env, bus_jpg, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:9")  # nothing listens on the discard port
    res = runner.invoke(app, ["ask", str(bus_jpg), "How many people?", "--model", "ollama:qwen2.5"])
    assert res.exit_code == 2, res.output
    assert "chat model chat-ollama:qwen2.5 failed" in res.output and "Connection refused" in res.output
    assert "ollama serve" in res.output and "ollama pull qwen2.5" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) <= 3


def test_an_openai_model_without_a_key_is_one_line(ask_env, bus_jpg, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    res = runner.invoke(app, ["ask", str(bus_jpg), "How many people?", "--model", "openai:gpt-4o-mini"])
    assert res.exit_code == 2, res.output
    assert "openai:gpt-4o-mini" in res.output and "OPENAI_API_KEY" in res.output and "Traceback" not in res.output


def test_a_reply_without_any_evidence_exits_1(ask_env, bus_jpg, monkeypatch):
    def broken_detector(self, image, labels, min_score, boxes):
        raise ToolException("yolo failed: the model file is damaged")

    monkeypatch.setattr(ExpertToolbox, "_detect", broken_detector)
    script(monkeypatch, {"tool": "detect_objects", "args": {}}, {"content": "Answer: 4"})
    res = runner.invoke(app, ["ask", str(bus_jpg), "How many people?"])
    assert res.exit_code == 1, res.output
    assert "no tool call succeeded" in res.output and res.stdout.strip() == "4"


def test_a_rule_whose_detector_fails_is_an_error_not_an_llm_fallback(ask_env, bus_jpg, monkeypatch):
    def broken_detector(self, image, labels, min_score, boxes):
        raise ToolException("yolo failed: the model file is damaged")

    monkeypatch.setattr(ExpertToolbox, "_detect", broken_detector)
    model = script(monkeypatch)
    res = runner.invoke(app, ["ask", str(bus_jpg), "How many people are there?", "--rules"])
    assert res.exit_code == 2, res.output
    assert "rule could not run the detector: yolo failed: the model file is damaged" in res.output
    assert model.calls == []


def test_the_output_names_the_model_and_the_demo_model_note(ask_env, bus_jpg, monkeypatch, tmp_path):
    monkeypatch.setattr("agents.planner.model_note", lambda model: "a tiny demo model")
    script(monkeypatch, {"tool": "detect_objects", "args": {}}, {"content": "Answer: 4\nEvidence: detect_objects"})
    html = tmp_path / "trace.html"
    res = runner.invoke(app, ["ask", str(bus_jpg), "How many people?", "--html", str(html)])
    assert res.exit_code == 0, res.output
    assert "Unverified reply of expertbridge-scripted" in res.output and "note: a tiny demo model" in res.output
    assert res.stdout.strip() == "4"
    page = html.read_text()
    assert "Unverified reply of expertbridge-scripted" in page and "a tiny demo model" in page
    assert "<b>Answer:" not in page


def test_the_default_local_model_is_labelled_a_small_demo_model():
    assert model_note(create_chat_model(DEFAULT_LOCAL_MODEL)) == DEMO_MODEL_NOTE
    assert model_note(ScriptedChatModel()) is None


def test_an_echo_of_the_tool_output_is_not_shown_as_an_answer():
    tool = Step("tool", 0.1, 0.2, tool="detect_objects", output="4 objects: person ×4 (0.92), bus ×1 (0.87) center")
    echo = Trace("How many people?", "bus.jpg", "local-transformers:smollm2", steps=[tool])
    echo.answer, echo.evidence_used = "4 objects: person ×4 detected above 0.92, bus center", ["detect_objects"]
    assert echo.echoes_tools() and "repeats the tool output" in answer_label(echo)
    assert "repeats the tool output" in trace_to_html(echo)
    own = Trace("How many people?", "bus.jpg", "openai:gpt", steps=[tool], answer="4", evidence_used=["detect_objects"])
    assert not own.echoes_tools() and answer_label(own) == "Answer of openai:gpt"
    own.answer = "There are 4 people next to the bus."
    assert not own.echoes_tools()
    rule = Trace("How many people?", "bus.jpg", "x", mode="rule", steps=[tool], answer="4")
    assert answer_label(rule) == "Answer (rule, no LLM)"
    assert json.loads(echo.to_json())["model_note"] is None


def test_a_bridge_makes_describe_image_the_first_look():
    """With a bridge, the planner calls describe_image itself and the model starts from its caption."""
    import numpy as np

    from experts import Features, ItemResult

    class Describer:
        def generate(self, vectors, prompts):
            return ["an ant on a leaf"]

    class Encoder:
        name = "encoder"

        def run(self, sources):
            return [ItemResult(0, str(sources[0]), "0" * 64, Features(np.ones(4, np.float32)))]

    toolbox = ExpertToolbox(detector=object(), describer=Describer(), describer_expert=Encoder())
    model = ScriptedChatModel(steps=[{"content": "Answer: an ant\nEvidence: describe_image"}])
    result = Planner(model, toolbox, first_tool="describe_image").run("ant.jpg", "What is this?")
    assert [(s.kind, s.tool) for s in result.trace.steps] == [("tool", "describe_image"), ("model", None)]
    assert "an ant on a leaf" in result.trace.steps[0].output and result.trace.steps[0].error is None
    seen = [m.content for m in model.calls[0] if isinstance(m, ToolMessage)]
    assert len(seen) == 1 and "an ant on a leaf" in seen[0]  # the model reads the bridge's caption first
    assert model.tool_choices[0] is None  # nothing left to force
    assert result.evidence_used == ["describe_image"] and result.answer == "an ant"
    # without a first tool, the model must look first itself
    model = ScriptedChatModel(steps=[{"content": "Answer: an ant"}])
    Planner(model, toolbox).run("ant.jpg", "What is this?")
    assert model.tool_choices[0] == "any"


def test_the_reasoner_calls_the_bridge_first_when_one_is_given(monkeypatch, yolo):
    import types

    from workflows.reasoning import Reasoner

    job = types.SimpleNamespace(model=object(), expert=object(), prompt="<image>Caption:")
    monkeypatch.setattr("workflows.bridging.BridgeJob.load", lambda path: job)
    with_bridge = Reasoner(model=ScriptedChatModel(), experts={"yolo": yolo}, store=None, bridge="bridge/")
    assert with_bridge.planner.first_tool == "describe_image"
    assert Reasoner(model=ScriptedChatModel(), experts={"yolo": yolo}, store=None).planner.first_tool is None
