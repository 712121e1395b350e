"""The CoT planner with a scripted chat model and the real detector: routing, validation, limits, traces."""

from __future__ import annotations

import json
import threading
import time
import types

import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool

from agents.chat import ScriptedChatModel
from agents.planner import Planner, PlannerLimits, parse_answer
from agents.rules import match_question
from agents.tools import ExpertToolbox
from agents.trace import Trace
from agents.trace_html import trace_to_html
from bridges.text import render

FINAL = "Reasoning: the detector reported the people.\nAnswer: {n}\nEvidence: detect_objects"


def call(name, **args):
    return {"tool": name, "args": args}


@pytest.fixture(scope="module")
def people(yolo, bus_jpg):
    """The detector's own person count on bus.jpg: every expectation below is derived from it."""
    return yolo(bus_jpg).count("person")


def tool_messages(model: ScriptedChatModel) -> list[ToolMessage]:
    """The tool results the model was shown, in the order it saw them."""
    return [m for m in model.calls[-1] if isinstance(m, ToolMessage)]


def test_detector_call_is_routed_and_its_bridge_text_reaches_the_model(yolo, bus_jpg, people):
    model = ScriptedChatModel(steps=[call("detect_objects", labels=["person"]), {"content": FINAL.format(n=people)}])
    result = Planner(model, ExpertToolbox(detector=yolo)).run(str(bus_jpg), "How many people are in the image?")
    assert result.answer == str(people)
    assert result.rationale == "the detector reported the people."
    assert result.evidence_used == ["detect_objects"]
    assert [s.kind for s in result.trace.steps] == ["model", "tool", "model"]
    tool = result.trace.steps[1]
    assert tool.tool == "detect_objects" and tool.arguments == {"labels": ["person"]}
    assert [d["label"] for d in tool.evidence["items"]] == ["person"] * people
    seen = tool_messages(model)[0].content
    assert seen == tool.output  # the trace holds exactly what the model read ...
    from experts import evidence_from_dict

    assert seen == render(evidence_from_dict(tool.evidence), max_tokens=300, threshold=0.25)  # ... the bridge text
    assert f"person ×{people}" in seen


def test_the_first_turn_must_call_a_tool(yolo, bus_jpg, people):
    model = ScriptedChatModel(steps=[call("detect_objects"), {"content": FINAL.format(n=people)}])
    Planner(model, ExpertToolbox(detector=yolo)).run(str(bus_jpg), "How many people?")
    assert model.tool_choices[:2] == ["any", None]


def test_unknown_tool_is_rejected_and_the_model_is_told(yolo, bus_jpg, people):
    model = ScriptedChatModel(
        steps=[call("run_python", code="import os"), call("detect_objects"), {"content": FINAL.format(n=people)}]
    )
    result = Planner(model, ExpertToolbox(detector=yolo)).run(str(bus_jpg), "How many people?")
    rejected = result.trace.tool_steps[0]
    assert rejected.tool == "run_python" and rejected.evidence is None
    assert rejected.error == "error: unknown tool 'run_python'; the tools are: detect_objects"
    assert tool_messages(model)[0].content == rejected.error
    assert result.answer == str(people) and result.evidence_used == ["detect_objects"]


def test_bad_arguments_are_rejected_before_the_expert_runs(yolo, bus_jpg):
    model = ScriptedChatModel(steps=[call("detect_objects", min_score=7), {"content": "Answer: unknown"}])
    result = Planner(model, ExpertToolbox(detector=yolo)).run(str(bus_jpg), "How many people?")
    step = result.trace.tool_steps[0]
    assert step.error.startswith("error: invalid arguments: min_score: Input should be less than or equal to 1")
    assert step.store_misses is None  # the detector never ran
    assert result.evidence_used == []  # nothing answered, so nothing is cited


def test_a_failing_tool_is_fed_back_not_raised(yolo, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    model = ScriptedChatModel(steps=[call("detect_objects"), {"content": "Answer: I could not look at the image."}])
    result = Planner(model, ExpertToolbox(detector=yolo)).run(str(broken), "What is this?")
    error = result.trace.tool_steps[0].error
    assert error.startswith("error: yolo could not read the image:") and "broken.jpg" in error
    assert tool_messages(model)[0].content == error
    assert result.answer == "I could not look at the image."


def test_tool_call_limit_then_the_model_must_answer_without_tools(yolo, bus_jpg, people):
    steps = [call("detect_objects"), call("detect_objects", labels=["bus"]), call("detect_objects", labels=["car"])]
    model = ScriptedChatModel(steps=[*steps, {"content": FINAL.format(n=people)}])
    limits = PlannerLimits(max_tool_calls=2)
    result = Planner(model, ExpertToolbox(detector=yolo), limits=limits).run(str(bus_jpg), "How many people?")
    tools = result.trace.tool_steps
    assert [t.error is None for t in tools] == [True, True, False]
    assert tools[2].error == "error: the limit of 2 tool calls is reached; answer now"
    assert model.call_tools[0] == ["detect_objects"] and model.call_tools[-1] == []  # no tools on the last call
    assert result.answer == str(people)


def test_model_call_limit_stops_a_model_that_never_answers(yolo, bus_jpg):
    model = ScriptedChatModel(steps=[call("detect_objects")] * 10)
    limits = PlannerLimits(max_model_calls=3, max_tool_calls=10)
    result = Planner(model, ExpertToolbox(detector=yolo), limits=limits).run(str(bus_jpg), "How many people?")
    assert len(result.trace.model_steps) == 3
    assert model.call_tools[2] == []  # the third and last call was asked to answer
    # the scripted model ignores that and calls a tool again: the run still ends, and says why
    assert result.trace.stopped_by == "model-call limit of 3 reached"
    assert result.answer == "(no answer: model-call limit of 3 reached)"


def test_time_budget_stops_before_any_model_call(yolo, bus_jpg):
    model = ScriptedChatModel(steps=[call("detect_objects")])
    limits = PlannerLimits(time_budget_s=0.0)
    result = Planner(model, ExpertToolbox(detector=yolo), limits=limits).run(str(bus_jpg), "How many people?")
    assert model.calls == [] and result.trace.stopped_by == "time budget of 0s used up"
    assert [s.kind for s in result.trace.steps] == ["limit"]


def test_token_budget_counts_prompt_and_completion_tokens(yolo, bus_jpg):
    model = ScriptedChatModel(steps=[call("detect_objects"), call("detect_objects")])
    limits = PlannerLimits(max_tokens=50)
    result = Planner(model, ExpertToolbox(detector=yolo), limits=limits).run(str(bus_jpg), "How many people?")
    first = result.trace.model_steps[0]
    assert first.input_tokens + first.output_tokens >= 50  # the system prompt alone is over budget
    assert result.trace.stopped_by == "token budget of 50 used up"
    assert len(result.trace.model_steps) == 1


def test_trace_is_complete_and_round_trips_through_json(yolo, bus_jpg, people):
    model = ScriptedChatModel(steps=[call("detect_objects"), {"content": FINAL.format(n=people)}])
    result = Planner(model, ExpertToolbox(detector=yolo)).run(str(bus_jpg), "How many people?")
    trace = result.trace
    requested = [c["name"] for s in trace.model_steps for c in s.tool_calls]
    assert requested == [s.tool for s in trace.tool_steps]  # every requested call has its tool step
    assert all(s.prompt_chars > 0 and s.input_tokens > 0 and s.seconds >= 0 for s in trace.model_steps)
    assert trace.tool_steps[0].store_misses == 1 and trace.tool_steps[0].seconds > 0
    starts = [s.started for s in trace.steps]
    assert starts == sorted(starts)
    split = trace.time_split()
    assert split["model"] + split["tools"] + split["framework"] == pytest.approx(trace.seconds)
    data = json.loads(trace.to_json())
    again = Trace.from_dict(data)
    assert again.to_dict() == trace.to_dict()


def test_html_trace_shows_the_image_the_steps_and_escapes_text(yolo, bus_jpg, people):
    model = ScriptedChatModel(steps=[call("detect_objects"), {"content": FINAL.format(n=people)}])
    result = Planner(model, ExpertToolbox(detector=yolo)).run(str(bus_jpg), "<script>alert(1)</script> people?")
    page = trace_to_html(result.trace, bus_jpg)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert page.count('src="data:image/png;base64,') == 1
    assert "tool detect_objects" in page and f"person ×{people}" in page
    assert f"<b>Answer of expertbridge-scripted:scripted:</b> {people}" in page  # who answered, not just "Answer"


def test_rule_path_answers_counting_without_the_model_and_says_so(yolo, bus_jpg, people):
    model = ScriptedChatModel(steps=[])
    planner = Planner(model, ExpertToolbox(detector=yolo), rules=True)
    result = planner.run(str(bus_jpg), "How many people are in the image?")
    assert model.calls == []
    assert result.answer == str(people) and result.trace.mode == "rule"
    assert [s.kind for s in result.trace.steps] == ["tool", "rule"]
    presence = planner.run(str(bus_jpg), "Is there a bus?")
    assert presence.answer == "yes" and presence.trace.mode == "rule"


def test_rule_matching_only_takes_classes_the_detector_knows():
    labels = ["person", "bus", "knife"]
    assert match_question("How many people are there?", labels).label == "person"
    assert match_question("how many buses can you see?", labels).label == "bus"
    assert match_question("How many knives?", labels).label == "knife"
    assert match_question("Are there any persons in the image?", labels).kind == "presence"
    assert match_question("How many dogs are there?", labels) is None
    assert match_question("Why is the bus red?", labels) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Reasoning: saw 4.\nAnswer: 4\nEvidence: detect_objects", ("4", "saw 4.", ["detect_objects"])),
        ("**Answer**: yes\nReasoning: a bus\nis there", ("yes", "a bus is there", [])),
        ("<think>hmm</think>There are four people.", ("There are four people.", None, [])),
        ("Answer: 2\nEvidence: detect_objects, caption_image", ("2", None, ["detect_objects", "caption_image"])),
        ("", (None, None, [])),
        (  # the fields run together on one line, as small models often write them
            "Reasoning: no dog was found, so a dog is absent. Answer: yes Evidence: classify_few_shot",
            ("yes", "no dog was found, so a dog is absent.", ["classify_few_shot"]),
        ),
    ],
)
def test_answer_parsing(text, expected):
    assert parse_answer(text) == expected


def test_toolbox_only_offers_the_experts_it_was_given(yolo):
    assert ExpertToolbox(detector=yolo).names == ["detect_objects"]
    assert ExpertToolbox().names == []


def test_scripted_model_tool_call_shape():
    msg = ScriptedChatModel(steps=[call("detect_objects", labels=["person"])]).invoke("hi")
    assert isinstance(msg, AIMessage) and msg.tool_calls[0]["name"] == "detect_objects"


class SlowToolbox:
    """One ``detect_objects`` tool that takes ``seconds`` (or until released), for the time budget."""

    detector = None

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.release = threading.Event()
        self.finished = threading.Event()

    @property
    def tools(self):
        # An argument, so the model calls it (a lone tool without arguments the planner calls itself).
        @tool("detect_objects")
        def detect_objects(labels: list[str] | None = None) -> str:
            """Detect objects in the image."""
            self.release.wait(self.seconds)
            self.finished.set()
            return "person ×1"

        return [detect_objects]


def test_a_lone_tool_without_arguments_is_called_by_the_planner_not_the_model():
    from types import SimpleNamespace

    shape = SimpleNamespace(
        classnames=("circle", "square"),
        predict=lambda images: [SimpleNamespace(label="circle", probabilities={"circle": 0.9, "square": 0.1})],
    )
    model = ScriptedChatModel(steps=["Reasoning: the shape is circle.\nAnswer: circle"])
    result = Planner(model, ExpertToolbox(classifiers={"shape": shape})).run("x.png", "What shape is it?")
    assert [s.kind for s in result.trace.steps] == ["tool", "model"]  # one model call, not two
    assert len(model.calls) == 1 and model.tool_choices == [None]  # nothing left to force
    assert result.answer == "circle" and result.evidence_used == ["classify_few_shot"]
    # call_lone_tool=False: the model is made to call it (a forced choice)
    model = ScriptedChatModel(steps=[call("classify_few_shot"), "Answer: circle"])
    Planner(model, ExpertToolbox(classifiers={"shape": shape}), call_lone_tool=False).run("x.png", "What shape?")
    assert model.tool_choices[0] == "any" and len(model.calls) == 2
    # with look_first off the model decides whether to look
    model = ScriptedChatModel(steps=["Answer: circle"])
    Planner(model, ExpertToolbox(classifiers={"shape": shape}), look_first=False).run("x.png", "What shape is it?")
    assert model.tool_choices == [None] and len(model.calls) == 1


def test_time_budget_bounds_the_planners_own_first_look():
    class SlowLook(SlowToolbox):
        @property
        def tools(self):
            @tool("caption_image")
            def caption_image() -> str:
                """One-sentence caption."""
                self.release.wait(self.seconds)
                return "a bus"

            return [caption_image]

    toolbox = SlowLook(8.0)
    model = ScriptedChatModel(steps=[])
    t0 = time.perf_counter()
    result = Planner(model, toolbox, limits=PlannerLimits(time_budget_s=1.0)).run("x.jpg", "What is it?")
    assert time.perf_counter() - t0 < 1.0 + 1.5
    toolbox.release.set()
    assert model.calls == []
    assert result.trace.stopped_by.startswith("time budget of 1s exceeded: tool 'caption_image' was still running")
    assert result.answer == f"(no answer: {result.trace.stopped_by})"


def test_time_budget_abandons_a_tool_that_runs_past_it():
    toolbox = SlowToolbox(8.0)
    model = ScriptedChatModel(steps=[call("detect_objects"), {"content": FINAL.format(n=1)}])
    t0 = time.perf_counter()
    result = Planner(model, toolbox, limits=PlannerLimits(time_budget_s=2.0)).run("x.jpg", "How many people?")
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0 + 1.5, f"a 2 s budget took {elapsed:.1f}s"
    assert not toolbox.finished.is_set()  # returned while the tool was still running
    toolbox.release.set()
    stopped = result.trace.stopped_by
    assert stopped.startswith("time budget of 2s exceeded: tool 'detect_objects' was still running at 2.")
    (step,) = result.trace.tool_steps
    # the tool ran until the budget ran out (it started after the first model call, which a busy machine slows)
    assert step.error == f"error: {stopped}; its result was dropped" and 1.9 < step.started + step.seconds < 3.0
    assert len(model.calls) == 1  # the run ended: the model was not asked again
    assert [s.kind for s in result.trace.steps] == ["model", "tool", "limit"]
    assert result.answer == f"(no answer: {stopped})"


def test_time_budget_abandons_a_model_call_that_runs_past_it(yolo, bus_jpg):
    def slow(messages):
        time.sleep(4.0)
        return "Answer: too late"

    model = ScriptedChatModel(steps=[slow])
    t0 = time.perf_counter()
    result = Planner(model, ExpertToolbox(detector=yolo), limits=PlannerLimits(time_budget_s=1.0)).run(
        str(bus_jpg), "How many people?"
    )
    assert time.perf_counter() - t0 < 1.0 + 1.5
    assert result.trace.stopped_by.startswith("time budget of 1s exceeded: the model call was still running")
    assert result.answer.startswith("(no answer: time budget of 1s exceeded")


def test_an_oversized_reply_is_capped_at_the_model_and_cut_in_the_trace():
    huge = "Reasoning: " + "blah " * 200_000 + "\nAnswer: 1\nEvidence: detect_objects"  # ~1 MB
    model = ScriptedChatModel(steps=[call("detect_objects"), {"content": huge}])
    limits = PlannerLimits(max_reply_tokens=64, max_reply_chars=4000)
    result = Planner(model, SlowToolbox(0.0), limits=limits).run("x.jpg", "How many people?")
    assert model.reply_caps == [64, 64]  # the cap reaches the chat model with every call
    last = result.trace.model_steps[-1]
    assert len(huge) > 1_000_000 and len(last.content) == 4000
    assert last.note == f"reply of {len(huge):,} characters cut to 4,000 (max_reply_chars=4000)"
    assert "characters cut …]" in last.content
    assert result.answer == "1" and result.evidence_used == ["detect_objects"]  # the tail (the answer) is kept
    assert len(result.rationale) < 4000
    assert "note: reply of" in trace_to_html(result.trace)


def test_reply_cap_uses_each_models_own_setting_and_never_raises_it():
    from agents.chat import LocalChatModel, reply_cap

    assert reply_cap(LocalChatModel(model="/no/such/model"), 1024) == {"max_new_tokens": 256}  # its default
    assert reply_cap(LocalChatModel(model="/no/such/model", max_new_tokens=4096), 1024) == {"max_new_tokens": 1024}
    assert reply_cap(ScriptedChatModel(), 77) == {"max_tokens": 77}


def test_time_budget_also_bounds_the_rule_path():
    toolbox = SlowToolbox(8.0)
    toolbox.detector = types.SimpleNamespace(names={0: "person"})  # the rule path: no LLM, one detector call
    model = ScriptedChatModel(steps=[])
    t0 = time.perf_counter()
    planner = Planner(model, toolbox, rules=True, limits=PlannerLimits(time_budget_s=1.0))
    result = planner.run("x.jpg", "How many people?")
    assert time.perf_counter() - t0 < 1.0 + 1.5
    toolbox.release.set()
    assert result.trace.mode == "rule" and model.calls == []
    assert result.trace.stopped_by.startswith("time budget of 1s exceeded: tool 'detect_objects' was still running")
    assert result.answer == f"(no answer: {result.trace.stopped_by})"


def test_a_model_asking_again_for_a_result_it_has_is_asked_to_answer_instead():
    from types import SimpleNamespace

    from agents.planner import ANSWER_FROM_EVIDENCE

    class Shapes:
        classnames = ("circle", "square")

        def predict(self, images):
            return [SimpleNamespace(label="circle", probabilities={"circle": 0.9, "square": 0.1}, error=None)]

    again = call("classify_few_shot")
    model = ScriptedChatModel(steps=[again, "Reasoning: it is a circle.\nAnswer: circle"])
    result = Planner(model, ExpertToolbox(classifier=Shapes())).run("x.png", "What shape is it?")
    assert result.answer == "circle"
    # the planner looked first (a lone tool without arguments); the model asked for the same result again
    assert [s.kind for s in result.trace.steps] == ["tool", "model", "retry", "model"]
    assert len(result.trace.tool_steps) == 1  # the repeat never ran the tool
    last = model.calls[-1]
    assert last[-1].content == ANSWER_FROM_EVIDENCE and model.call_tools[-1] == []


def test_the_same_call_twice_in_one_reply_counts_once():
    from agents.chat.toolcalls import parse_reply

    tools = [{"type": "function", "function": {"name": "a", "parameters": {}}}]
    p = parse_reply('{"name": "a", "arguments": {}}\n{"name": "a", "arguments": {}}', tools, [])
    assert [c["id"] for c in p.tool_calls] == ["call_0"] and "repeat" in p.repairs[0]


def test_the_question_is_restated_after_the_evidence_and_only_then():
    from types import SimpleNamespace

    from agents.planner import RESTATE_QUESTION, YES_NO_HINT

    class Shapes:
        classnames = ("circle", "square")

        def predict(self, images):
            return [SimpleNamespace(label="circle", probabilities={"circle": 0.9, "square": 0.1}, error=None)]

    model = ScriptedChatModel(steps=[call("classify_few_shot"), "Reasoning: it is a circle.\nAnswer: no"])
    planner = Planner(model, ExpertToolbox(classifier=Shapes()), look_first=False)  # the model calls the tool
    result = planner.run("x.png", "is there not a square?")
    assert result.answer == "no"
    first, second = model.calls
    assert first[-1].content == "is there not a square?"  # before any evidence: the question itself, once
    *_, evidence, reminder = second
    assert isinstance(evidence, ToolMessage) and "circle" in evidence.content
    assert reminder.content == RESTATE_QUESTION.format(question="is there not a square?") + YES_NO_HINT
    assert sum(m.content == reminder.content for m in second) == 1  # a per-call reminder, not kept in the history


def test_only_yes_no_questions_get_the_yes_no_hint():
    from agents.planner import YES_NO_HINT, is_yes_no, restated

    yes_no = [
        "is there not a black shape?",
        "Does the image contain a dog?",
        "Are there 3 people?",
        "can you see a bus",
    ]
    other = ["what color is the shape?", "How many people?", "is it a cat or a dog?", "Which is bigger, A or B?"]
    assert [is_yes_no(q) for q in yes_no] == [True] * 4
    assert [is_yes_no(q) for q in other] == [False] * 4
    assert restated("what shape is it?").endswith("in the required format.")  # the hint made it answer "Yes"
    assert restated("is there a circle?").endswith(YES_NO_HINT)
