"""One agent graph per planner: tools declared once, the image and the run's state in the run context."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool

import agents.planner
from agents.chat import ScriptedChatModel
from agents.planner import Planner, PlannerLimits
from agents.tools import TOOLS, ExpertToolbox, call_tool
from experts import Detection, Detections, Features, ItemResult


class NameDetector:
    """Sees whatever the image's file name says ("dog.png": one dog): a tool that gets another run's image
    reports the wrong animal."""

    name = "name_detector"
    names = {0: "cat", 1: "dog"}
    evidence_type = Detections

    def run(self, sources):
        label = Path(str(sources[0])).stem
        found = Detections((64, 64), (Detection((1.0, 2.0, 30.0, 40.0), label, 0.9, 0),))
        return [ItemResult(0, str(sources[0]), "0" * 64, found)]


def ask(label: str) -> dict:
    return {"tool": "detect_objects", "args": {"labels": [label]}}


def test_the_agent_graph_is_built_once_for_many_questions(monkeypatch):
    built = []
    real = agents.planner.create_agent
    monkeypatch.setattr(agents.planner, "create_agent", lambda *a, **k: built.append(1) or real(*a, **k))
    model = ScriptedChatModel(steps=[ask("cat"), "Answer: cat", ask("dog"), "Answer: dog", ask("cat"), "Answer: no"])
    # one tool call per run: a counter kept across runs would refuse the second question's call
    planner = Planner(model, ExpertToolbox(detector=NameDetector()), limits=PlannerLimits(max_tool_calls=1))
    results = [planner.run(f"{a}.png", f"Is there a {a}?") for a in ("cat", "dog", "bird")]
    assert len(built) == 1 and planner.agent is planner.agent
    for result, animal in zip(results, ("cat", "dog", "bird"), strict=True):
        assert [s.kind for s in result.trace.steps] == ["model", "tool", "model"]  # each run's own trace
        (step,) = result.trace.tool_steps
        assert step.error is None and result.trace.question == f"Is there a {animal}?"
        assert [d["label"] for d in step.evidence["items"]] == ([animal] if animal != "bird" else [])


def test_the_image_never_appears_in_a_tool_schema_the_model_sees():
    shape = SimpleNamespace(classnames=("circle", "square"))
    clip = SimpleNamespace(name="clip", evidence_type=Features, zero_shot_logits=lambda *a: None)
    toolbox = ExpertToolbox.from_experts(
        [NameDetector(), clip, SimpleNamespace(name="cap", evidence_type=type("Caption", (), {"kind": "caption"}))],
        dense_captioner=object(),
        classifiers={"shape": shape},
        describer=object(),
        describer_expert=object(),
    )
    tools = toolbox.tools
    assert [t.name for t in tools] == [spec.name for spec in TOOLS]  # every declared tool is checked
    for tool in tools:
        shown = convert_to_openai_tool(tool)["function"]["parameters"]  # what bind_tools sends the model
        fields = set(shown.get("properties", {})) | set(tool.tool_call_schema.model_json_schema()["properties"])
        assert not fields & {"runtime", "image", "context"}, (tool.name, fields)
        assert set(fields) == set(tool.args)
    assert set(tools[0].args) == {"labels", "min_score", "boxes"} and tools[3].args.keys() == {"candidates"}


def test_a_tool_reads_the_image_from_the_run_context_and_says_so_when_there_is_none():
    (tool,) = ExpertToolbox(detector=NameDetector()).tools
    assert "dog ×1" in call_tool(tool, "dog.png").content
    assert call_tool(tool, "cat.png").artifact["evidence"]["items"][0]["label"] == "cat"
    # invoked the way an agent would, but without the run context: an error for the model, not a crash
    message = tool.invoke({"type": "tool_call", "name": tool.name, "args": {"runtime": _NoContext()}, "id": "c"})
    assert message.status == "error" and "without an image" in message.content


class TwoAtOnce(ScriptedChatModel):
    """Answers from what it was sent (thread-safe, unlike a script); its first calls of two runs meet at a
    barrier, so both runs are in the graph at once."""

    def __init__(self, barrier: threading.Barrier) -> None:
        super().__init__()
        self._barrier = barrier

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        results = [m for m in messages if isinstance(m, ToolMessage)]
        if not results:
            self._barrier.wait()
            question = messages[-1].content
            reply = AIMessage("", tool_calls=[{"name": "detect_objects", "args": {}, "id": f"c-{question}"}])
        else:
            reply = AIMessage(f"Answer: {results[-1].content}")
        return ChatResult(generations=[ChatGeneration(message=reply)])


def test_two_questions_at_once_on_two_threads_keep_their_own_image_and_counters():
    barrier = threading.Barrier(2, timeout=20)
    planner = Planner(
        TwoAtOnce(barrier), ExpertToolbox(detector=NameDetector()), limits=PlannerLimits(max_tool_calls=1)
    )
    results = {}

    def one(animal: str) -> None:
        results[animal] = planner.run(f"{animal}.png", f"What animal is it ({animal})?")

    threads = [threading.Thread(target=one, args=(a,)) for a in ("cat", "dog")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not barrier.broken  # both runs were in their first model call at the same time
    for animal in ("cat", "dog"):
        trace = results[animal].trace
        assert [s.kind for s in trace.steps] == ["model", "tool", "model"], trace.steps
        (step,) = trace.tool_steps
        assert step.error is None and step.evidence["items"][0]["label"] == animal  # its own image
        assert animal in results[animal].answer and trace.stopped_by is None


@pytest.mark.parametrize("rules", [False, True])
def test_the_rule_path_and_the_first_look_get_the_image_too(rules):
    model = ScriptedChatModel(steps=["Answer: a dog"])
    toolbox = ExpertToolbox(detector=NameDetector()) if rules else ExpertToolbox(captioner=_Captioner())
    result = Planner(model, toolbox, rules=rules).run("dog.png", "How many dogs are there?")
    if rules:  # counted without the model, from the detector's view of dog.png
        assert result.trace.mode == "rule" and result.answer.startswith("1") and model.calls == []
    else:  # the planner's own first look (a lone tool without arguments) captioned dog.png
        assert result.trace.tool_steps[0].output == 'Caption: "a photo of dog.png".'
        assert "a photo of dog.png" in [m for m in model.calls[0] if isinstance(m, ToolMessage)][0].content


class _NoContext(SimpleNamespace):
    context = None


class _Captioner:
    name = "captioner"

    def run(self, sources):
        from experts import Caption

        return [ItemResult(0, str(sources[0]), "0" * 64, Caption(f"a photo of {sources[0]}"))]
