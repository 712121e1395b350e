"""Model and server failures: a refused forced tool choice is retried with "auto"; everything else is one clear line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatResult
from typer.testing import CliRunner

from agents.chat import ScriptedChatModel
from agents.model_errors import refuses_tool_history
from agents.planner import CALL_A_TOOL, Planner, model_failure, refuses_forced_choice
from agents.tools import ExpertToolbox
from experts.errors import ChatModelError


class FakeHTTPError(Exception):
    """Shaped like openai.APIStatusError: a status code and a message."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


class FakeConnectError(Exception):
    """Shaped like openai.APIConnectionError."""


@dataclass
class Prediction:
    label: str
    probabilities: dict[str, float]
    error: str | None = None


@dataclass
class ShapeClassifier:
    """A stand-in for a fitted FewShotClassifier: always 'circle'."""

    classnames: tuple[str, ...] = ("circle", "rectangle", "triangle")
    calls: list[Any] = field(default_factory=list)

    def predict(self, images):
        self.calls.append(list(images))
        return [Prediction("circle", {"circle": 0.9, "rectangle": 0.06, "triangle": 0.04}) for _ in images]


class RefusesForcedChoice(ScriptedChatModel):
    """A server refusing every forced tool_choice (HTTP 500), named or not."""

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        choice = kwargs.get("tool_choice")
        if choice not in (None, "auto", "none"):
            self.tool_choices.append(choice)
            raise FakeHTTPError(500, "Internal Server Error")
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


class LlamaCppServer(ScriptedChatModel):
    """llama-cpp-python's OpenAI server (chatml-function-calling): HTTP 500 for tool_choice="any" (its
    "required"), and for any tool call or result in the history (the assistant's null content fails its
    request validation); a named tool choice is taken."""

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        if kwargs.get("tool_choice") == "any":
            self.tool_choices.append("any")
            raise FakeHTTPError(500, "Internal Server Error")
        if any(isinstance(m, ToolMessage) or getattr(m, "tool_calls", None) for m in messages):
            self.calls.append(list(messages))
            raise FakeHTTPError(500, "7 validation errors:\n  {'type': 'string_type', ...}")
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


class Unreachable(ScriptedChatModel):
    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        raise FakeConnectError("Connection error.")


ANSWER = "Reasoning: the classifier says circle.\nAnswer: circle\nEvidence: classify_few_shot"


def script() -> list:
    return [{"tool": "classify_few_shot", "args": {}}, ANSWER]


def test_a_refused_forced_choice_is_retried_with_auto_and_an_instruction():
    model = RefusesForcedChoice(steps=script() * 2)
    # A second tool, so there is a choice to force (a lone tool without arguments the planner calls itself).
    planner = Planner(model, ExpertToolbox(classifier=ShapeClassifier(), captioner=object()))
    result = planner.run("img.png", "What shape is in the image?")
    assert result.answer == "circle"
    kinds = [s.kind for s in result.trace.steps]
    assert kinds == ["retry", "model", "tool", "model"]
    assert "refused tool_choice='any'" in result.trace.steps[0].content
    first = model.calls[0]  # what the model saw on the retried first turn
    assert isinstance(first[-1], HumanMessage) and first[-1].content == CALL_A_TOOL
    assert model.tool_choices[:2] == ["any", "auto"]

    # The planner remembers: the next question goes straight to "auto" + instruction, no failed request.
    again = planner.run("img.png", "What shape is in the image?")
    assert [s.kind for s in again.trace.steps] == ["model", "tool", "model"]
    assert model.tool_choices == ["any", "auto", None, "auto", None]


def test_tool_history_refused_by_the_server_is_sent_again_as_text():
    """The planner's own first look (a tool call and its result) opens the history; the server refuses it."""
    model = LlamaCppServer(steps=[ANSWER, ANSWER])
    planner = Planner(model, ExpertToolbox(classifier=ShapeClassifier()))
    result = planner.run("img.png", "What shape is in the image?")
    assert result.answer == "circle" and result.evidence_used == ["classify_few_shot"]
    assert [s.kind for s in result.trace.steps] == ["tool", "retry", "model"]
    retry = result.trace.steps[1].content
    assert retry.startswith("the server refused the tool calls and results in the history (7 validation errors:)")
    refused, taken = model.calls  # the same conversation, the second time as text in plain roles
    assert [type(m) for m in refused[2:4]] == [AIMessage, ToolMessage]  # after the system prompt and question
    assert not any(isinstance(m, ToolMessage) or getattr(m, "tool_calls", None) for m in taken)
    tool_output = result.trace.steps[0].output
    assert taken[3].content == f"<tool_response>\n{tool_output}\n</tool_response>"
    assert '"name": "classify_few_shot"' in taken[2].content  # the call, as the <tool_call> text protocol writes it

    # The planner remembers: the next question's history goes as text at once, no refused request.
    again = planner.run("img.png", "What shape is in the image?")
    assert [s.kind for s in again.trace.steps] == ["tool", "model"] and planner.quirks.text_tool_history
    assert len(model.calls) == 3 and again.answer == "circle"


def test_a_refused_any_over_one_tool_names_it_then_the_history_goes_as_text():
    """``expertbridge ask`` with yolo alone against llama-cpp-python's server: every workaround in one run."""
    model = LlamaCppServer(steps=[{"tool": "classify_few_shot", "args": {}}, ANSWER])
    planner = Planner(model, ExpertToolbox(classifier=ShapeClassifier()), call_lone_tool=False)
    result = planner.run("img.png", "What shape is in the image?")
    assert result.answer == "circle"
    assert [s.kind for s in result.trace.steps] == ["retry", "model", "tool", "retry", "model"]
    assert "asked again with tool_choice='classify_few_shot' (the only tool)" in result.trace.steps[0].content
    assert model.tool_choices == ["any", "classify_few_shot", None]  # named: no instruction needed
    assert planner.quirks.refuses_forced_choice and planner.quirks.text_tool_history


class Broken(ScriptedChatModel):
    """A server failing every request (HTTP 500)."""

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        self.calls.append(list(messages))
        raise FakeHTTPError(500, "Internal Server Error\nTraceback (most recent call last): ...")


def test_a_failure_after_the_text_retry_is_one_clear_line():
    model = Broken()
    with pytest.raises(ChatModelError) as info:
        Planner(model, ExpertToolbox(classifier=ShapeClassifier())).run("img.png", "What shape?")
    message = str(info.value)
    assert message.startswith("chat model expertbridge-scripted:scripted failed: HTTP 500 FakeHTTPError: ")
    assert "\n" not in message and "its log says why" in message
    assert len(model.calls) == 2  # the history as sent, then once as text: no more


def test_an_unreachable_server_is_one_clear_error_and_not_retried():
    model = Unreachable(steps=script())
    planner = Planner(model, ExpertToolbox(classifier=ShapeClassifier()))
    with pytest.raises(ChatModelError) as info:
        planner.run("img.png", "What shape?")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("chat model expertbridge-scripted:scripted failed: FakeConnectError: Connection error.")
    assert "is the server running" in message


@pytest.mark.parametrize(
    ("err", "refusal"),
    [
        (FakeHTTPError(500, "7 validation errors:"), True),  # llama-cpp-python's server
        (FakeHTTPError(400, "bad request"), True),
        (FakeHTTPError(404, "model not found"), False),
        (FakeConnectError("Connection error."), False),
    ],
)
def test_what_counts_as_a_refused_history(err, refusal):
    assert refuses_tool_history(err) is refusal


@pytest.mark.parametrize(
    ("err", "refusal"),
    [
        (FakeHTTPError(500, "Internal Server Error"), True),  # llama-cpp-python's server
        (FakeHTTPError(400, "tool_choice 'required' is not supported"), True),  # vLLM without the flag
        (ValueError("Unrecognized tool_choice type"), True),
        (FakeConnectError("Connection error."), False),
        (FakeHTTPError(401, "bad key"), False),
        (TimeoutError("timed out"), False),
    ],
)
def test_what_counts_as_a_refusal(err, refusal):
    assert refuses_forced_choice(err) is refusal


@pytest.mark.parametrize(
    ("err", "hint"),
    [
        (FakeHTTPError(404, "model 'qwen' not found"), "check the model name"),
        (FakeHTTPError(401, "invalid api key"), "check the API key"),
        (FakeHTTPError(503, "overloaded\nTraceback (most recent call last): ..."), "its log says why"),
        (TimeoutError("Request timed out."), "did not answer in time"),
    ],
)
def test_failures_name_the_model_the_cause_and_what_to_try(err, hint):
    message = str(model_failure("openai-compatible:qwen", err))
    assert message.startswith("chat model openai-compatible:qwen failed: ")
    assert hint in message and "\n" not in message and "Traceback" not in message


def test_ask_reports_a_dead_server_in_one_line(bus_jpg, yolo_weights, monkeypatch, tmp_path):
    """A real connection refused on 127.0.0.1 (nothing listens on port 9): one line, exit 1, no traceback."""
    from workflows.cli import app

    monkeypatch.setenv("EXPERTBRIDGE_STORE_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("EXPERTBRIDGE_YOLO_WEIGHTS", str(yolo_weights))
    result = CliRunner().invoke(
        app,
        ["ask", str(bus_jpg), "How many people?", "--model", "openai-compatible:http://127.0.0.1:9/v1|qwen"],
    )
    assert result.exit_code == 2, result.output  # a model server failure: one line, exit 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: chat model openai-chat:qwen failed: ")
    assert "is the server running" in lines[0] and "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_scripted_steps_still_work_with_the_guard():
    model = ScriptedChatModel(steps=[AIMessage("Answer: no tools needed")])
    result = Planner(model, ExpertToolbox(), look_first=False).run("img.png", "Hi?")
    assert result.answer == "no tools needed"
