"""LLM-written class descriptions (CuPL / CaFo's "Prompt" step) with fake langchain chat models."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing

import pytest
import torch
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr, SecretStr

from agents.description_cache import FILENAME, DescriptionCache
from agents.descriptions import (
    DEFAULT_QUESTIONS,
    ClassDescriptions,
    describe_classes,
    model_identity,
    parse_answers,
    template_prompts,
)
from experts import ConfigError, create_expert


class RecordingChatModel(BaseChatModel):
    """Answers with ``reply(question)`` (the first line of the prompt) and records every prompt it got."""

    model: str = "recorder-a"
    reply: Callable[[str], str]
    _prompts: list[str] = PrivateAttr(default_factory=list)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "recording"

    @property
    def prompts(self) -> list[str]:
        return list(self._prompts)

    @property
    def questions(self) -> list[str]:
        return [p.splitlines()[0] for p in self._prompts]

    def _generate(self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs) -> ChatResult:
        (message,) = messages
        with self._lock:  # batch() calls us from a thread pool
            self._prompts.append(message.text)
        text = self.reply(message.text.splitlines()[0])
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


def numbered(question: str) -> str:
    """A plausible, messy reply: preamble, numbering styles, quotes, a line without the class."""
    name = next(c for c in ("apple pie", "ant", "bee", "zorblax") if c in question)
    return (
        "Sure! Here are three answers:\n"
        f'1. "The {name} is small and brown"\n'
        f"2) It has six legs ({question[:9]})\n"
        "\n"
        f"3. {name.capitalize()}s often march in long lines.\n"
    )


def test_parse_answers_cleans_exactly():
    reply = (
        "<think>The user wants bees.</think>Sure, here are 4 descriptions of a bee:\n"
        '1. "A bee has yellow and black stripes".\n'
        "2) It has two pairs of translucent wings\n"
        "- **Bees hover over flowers collecting pollen**\n"
        "* a bee\n"
        "4. I'm sorry, I can’t help with that.\n"
        "5. A caption of an image of a bee:\n"
        "How can you identify a bee?\n"
    )
    assert parse_answers(reply, "bee") == [
        "A bee has yellow and black stripes.",
        "bee: It has two pairs of translucent wings.",
        "Bees hover over flowers collecting pollen.",
    ]
    assert parse_answers(reply, "bee", limit=1) == ["A bee has yellow and black stripes."]
    # a paragraph instead of a list: its sentences; ImageFolder names are spoken with spaces
    assert parse_answers("A golden retriever has a golden coat. It loves water!", "golden_retriever") == [
        "A golden retriever has a golden coat.",
        "golden retriever: It loves water!",
    ]
    assert parse_answers("I cannot describe that, as an AI language model.", "dog") == []
    assert parse_answers("???\n\n--\nok", "dog") == []


def test_every_question_is_asked_for_every_class():
    model = RecordingChatModel(reply=numbered)
    describe_classes(["ant", "apple pie"], model, answers_per_question=7)
    assert sorted(model.questions) == sorted(
        [q.format("ant", article="an") for q in DEFAULT_QUESTIONS]
        + [q.format("apple pie", article="an") for q in DEFAULT_QUESTIONS]
    )
    assert "Describe what an ant looks like" in model.questions
    assert "A caption of an image of an apple pie:" in model.questions
    assert all("numbered 1 to 7" in p for p in model.prompts)


def test_answers_are_cleaned_tied_to_the_class_and_deduplicated():
    questions = ("What does {article} {} look like?", "A caption of an image of {article} {}:")
    d = describe_classes(["ant"], RecordingChatModel(reply=numbered), questions=questions)
    # The same two lines from both questions appear once; the line without "ant" is prefixed.
    assert d.prompts == {
        "ant": (
            "The ant is small and brown.",
            "ant: It has six legs (What does).",
            "Ants often march in long lines.",
            "ant: It has six legs (A caption).",
        )
    }
    assert d.source == {"ant": "llm"} and d.errors == {}


def test_disk_cache_second_run_makes_no_calls(tmp_path):
    first = RecordingChatModel(reply=numbered)
    d1 = describe_classes(["ant", "bee"], first, cache_dir=tmp_path)
    assert len(first.prompts) == 2 * len(DEFAULT_QUESTIONS)
    assert [f.name for f in tmp_path.iterdir()] == ["descriptions.sqlite"]  # one file, no journal left over
    with closing(sqlite3.connect(tmp_path / "descriptions.sqlite")) as db:
        rows = db.execute("SELECT key_json, reply FROM replies").fetchall()
    assert len(rows) == 2 * len(DEFAULT_QUESTIONS)
    assert {json.loads(k)["class"] for k, _ in rows} == {"ant", "bee"}
    assert all(reply.startswith("Sure! Here are three answers:") for _, reply in rows)  # the raw reply

    again = RecordingChatModel(reply=numbered)
    assert describe_classes(["ant", "bee"], again, cache_dir=tmp_path) == d1
    assert again.prompts == []

    other_model = RecordingChatModel(model="recorder-b", reply=numbered)
    describe_classes(["ant", "bee"], other_model, cache_dir=tmp_path)
    assert len(other_model.prompts) == 2 * len(DEFAULT_QUESTIONS)

    one_more_question = RecordingChatModel(reply=numbered)
    describe_classes(["ant", "bee"], one_more_question, cache_dir=tmp_path, questions=(*DEFAULT_QUESTIONS, "A {}."))
    assert sorted(one_more_question.questions) == ["A ant.", "A bee."]  # only the new question is asked

    more_answers = RecordingChatModel(reply=numbered)
    describe_classes(["ant"], more_answers, cache_dir=tmp_path, answers_per_question=3)
    assert len(more_answers.prompts) == len(DEFAULT_QUESTIONS)


def test_corrupt_cache_file_is_a_warning_and_a_miss(tmp_path, caplog):
    (tmp_path / FILENAME).write_bytes(b"not a database, " * 64)
    model = RecordingChatModel(reply=numbered)
    with caplog.at_level(logging.WARNING, logger="agents.description_cache"):
        d = describe_classes(["ant", "bee"], model, cache_dir=tmp_path)
    assert d.source == {"ant": "llm", "bee": "llm"} and d.errors == {}
    assert len(model.prompts) == 2 * len(DEFAULT_QUESTIONS)  # every reply asked for again
    warnings = [r for r in caplog.records if r.name == "agents.description_cache"]
    assert len(warnings) == 1 and "treating it as empty" in warnings[0].getMessage()  # once, not per key


def test_concurrent_puts_from_threads_all_land(tmp_path):
    cache = DescriptionCache(tmp_path)
    keys = [{"class": f"c{t}", "question": f"q{i}"} for t in range(8) for i in range(25)]
    barrier = threading.Barrier(8)

    def write(thread: int) -> None:
        barrier.wait()  # all eight start together
        for key in keys[thread * 25 : (thread + 1) * 25]:
            cache.put(key, f"reply to {key['class']} {key['question']}")

    threads = [threading.Thread(target=write, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fresh = DescriptionCache(tmp_path)  # another instance, as another run would open it
    assert [fresh.get(k) for k in keys] == [f"reply to {k['class']} {k['question']}" for k in keys]
    assert fresh.get({"question": "q0", "class": "c0"}) == "reply to c0 q0"  # key order doesn't matter
    assert fresh.get({"class": "c0", "question": "q0", "answers": 3}) is None


def test_failing_model_falls_back_to_templates_and_is_not_cached(tmp_path, caplog):
    def down(question: str) -> str:
        raise RuntimeError("quota exceeded")

    with caplog.at_level(logging.WARNING, logger="agents.descriptions"):
        d = describe_classes(["ant", "bee"], RecordingChatModel(reply=down), cache_dir=tmp_path)
    assert d.source == {"ant": "templates", "bee": "templates"}
    assert d.prompts["ant"] == template_prompts("ant") and d.prompts["ant"][0] == "a photo of a ant."
    assert "itap of a bee." in d.prompts["bee"]
    assert set(d.errors) == {"ant", "bee"} and d.errors["ant"].startswith("RuntimeError: quota exceeded")
    assert "falls back to prompt templates" in caplog.text
    assert list(tmp_path.iterdir()) == []  # a failure is retried next run, never cached

    retry = RecordingChatModel(reply=numbered)
    assert describe_classes(["ant"], retry, cache_dir=tmp_path).source == {"ant": "llm"}
    assert len(retry.prompts) == len(DEFAULT_QUESTIONS)


def test_garbage_for_one_class_falls_back_for_that_class_only(tmp_path):
    def picky(question: str) -> str:
        if "zorblax" in question:
            return "I'm sorry, I don't know what that is.\n\n1. ???\n2. zorblax"
        if question.startswith("How can you identify a bee"):
            raise TimeoutError("slow")  # one question failing still leaves the others' answers
        return numbered(question)

    d = describe_classes(["ant", "zorblax", "bee"], RecordingChatModel(reply=picky), cache_dir=tmp_path)
    assert d.source == {"ant": "llm", "zorblax": "templates", "bee": "llm"}
    assert d.errors == {"zorblax": "no usable answer in the model's replies"}
    assert d.prompts["zorblax"] == template_prompts("zorblax")
    assert "The bee is small and brown." in d.prompts["bee"]
    assert list(d.prompts) == ["ant", "zorblax", "bee"]  # the classifier's column order

    # A garbage reply is still the model's answer: cached, so the rerun makes no calls either.
    rerun = RecordingChatModel(reply=picky)
    assert describe_classes(["zorblax"], rerun, cache_dir=tmp_path).source == {"zorblax": "templates"}
    assert rerun.prompts == []


def test_no_model_means_templates_without_errors():
    d = describe_classes(["ant", "bee"], None, templates=["a {} on a flower."])
    assert d.prompts == {
        "ant": ("a photo of a ant.", "a ant on a flower."),
        "bee": ("a photo of a bee.", "a bee on a flower."),
    }
    assert d.source == {"ant": "templates", "bee": "templates"} and d.errors == {}


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="classnames"):
        describe_classes([], None)
    with pytest.raises(ConfigError, match="questions"):
        describe_classes(["ant"], None, questions=["no placeholder"])
    with pytest.raises(ConfigError, match="questions"):
        describe_classes(["ant"], None, questions=["What does {the} {} look like?"])
    with pytest.raises(ConfigError, match="templates"):
        describe_classes(["ant"], None, templates=["no placeholder"])


def test_json_round_trip():
    d = describe_classes(["ant", "zorblax"], RecordingChatModel(reply=lambda q: "" if "zorblax" in q else numbered(q)))
    data = json.loads(json.dumps(d.to_dict()))
    assert data["format"] == "expertbridge.descriptions/1"
    assert ClassDescriptions.from_dict(data) == d
    assert d.as_prompts()["ant"] == list(d.prompts["ant"])
    with pytest.raises(ConfigError, match="format"):
        ClassDescriptions.from_dict({**data, "format": "something/else"})


def test_model_identity_uses_langchains_identifying_params():
    a = model_identity(FakeListChatModel(responses=["x"]))
    assert a["llm_type"] == "fake-list-chat-model" and a["responses"] == ["x"]
    assert a["class"].endswith("FakeListChatModel")
    assert model_identity(FakeListChatModel(responses=["y"])) != a
    assert model_identity(RecordingChatModel(reply=numbered))["model"] == "recorder-a"

    class WithSecret(RecordingChatModel):
        api_key: SecretStr = SecretStr("sk-do-not-store")

        @property
        def _identifying_params(self):
            return {"api_key": self.api_key, "temperature": 0.99}

    ident = model_identity(WithSecret(reply=numbered))
    assert ident["api_key"] == "<SecretStr>" and ident["temperature"] == 0.99
    assert "sk-do-not-store" not in json.dumps(ident)


def test_fake_list_chat_model_works_end_to_end():
    """langchain's own fake (whose batch() is sequential) answers in the order asked."""
    replies = [f"1. A photo of an ant, view {i}.\n2. An ant carrying a leaf, view {i}." for i in range(5)]
    d = describe_classes(["ant"], FakeListChatModel(responses=replies), answers_per_question=2)
    assert len(d.prompts["ant"]) == 10 and d.prompts["ant"][:2] == (
        "A photo of an ant, view 0.",
        "An ant carrying a leaf, view 0.",
    )


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return create_expert("clip", arch="RN50", weights=None, device="cpu", offline=True).load()


def test_descriptions_make_clip_class_weights(clip):
    """CuPL's recipe end to end: the descriptions become a (D, C) classifier of unit columns (RN50: D = 1024)."""
    names = ["ant", "zorblax"]  # text encoding is ~1 s a call on CPU here: keep it to four
    d = describe_classes(names, RecordingChatModel(reply=lambda q: "" if "zorblax" in q else numbered(q)))
    w = clip.class_weights_from_prompts(d.as_prompts())
    assert w.shape == (1024, 2)
    torch.testing.assert_close(w.norm(dim=0), torch.ones(2))
    plain = clip.class_weights_from_prompts(describe_classes(names, None).as_prompts())
    assert not torch.allclose(w[:, 0], plain[:, 0], atol=1e-3)  # LLM descriptions change the classifier
    torch.testing.assert_close(w[:, 1], plain[:, 1])  # the fallback class is exactly its templates
