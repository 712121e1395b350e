"""LLM-written class descriptions: the "Prompt" step of CaFo, following CuPL.

CaFo ("Prompt, Generate, then Cache", CVPR 2023) builds CLIP's zero-shot prior from
sentences a language model writes about each class, as CuPL (Pratt et al., ICCV 2023)
does: ask a few questions per class ("Describe what a dog looks like", …), keep many
answers, and average their CLIP text features per class. Any langchain-core chat model
works; replies are cached on disk (one SQLite file, :mod:`agents.description_cache`), so a
second run with the same model calls it zero times. When there is no model, or it fails or
answers nothing usable for a class, that class gets plain prompt templates instead, and the
result says which classes and why.

    from agents.descriptions import describe_classes
    descriptions = describe_classes(["ant", "bee"], chat_model, cache_dir="~/.cache/eb/descriptions")
    descriptions.errors                       # {} when every class got LLM descriptions
    clf = FewShotClassifier([dino], clip=clip, prompts=descriptions.as_prompts())

CuPL sampled with temperature 0.99; set sampling on the chat model itself.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage

from agents.description_cache import DescriptionCache
from experts.clip import template_set
from experts.errors import ConfigError

log = logging.getLogger(__name__)

FORMAT = "expertbridge.descriptions/1"

#: CuPL's five ImageNet questions (generate_image_prompts.py); ``{article}`` is "a"/"an".
DEFAULT_QUESTIONS: tuple[str, ...] = (
    "Describe what {article} {} looks like",
    "How can you identify {article} {}?",
    "What does {article} {} look like?",
    "Describe an image from the internet of {article} {}",
    "A caption of an image of {article} {}:",
)

# We ask for N numbered answers in one call rather than invoking N times: a greedy or
# low-temperature model (a local one, or a provider's default) repeats itself across
# calls, so N calls would cost N times as much and dedupe to one answer, while one call
# makes the model vary its own answers. It is also one reply per cache key. A model that
# ignores the format still works: any line (or sentence) of the reply is a candidate.
# One human message, no system message: some chat templates have no system role.
INSTRUCTION = (
    "{question}\n\n"
    "Give {n} different answers, one per line, numbered 1 to {n}. Each answer is one short sentence "
    "about what {article} {name} looks like in a photo and mentions the {name}. Write nothing else."
)

MIN_WORDS = 3
_MARKER = re.compile(r"^\s*(?:[-*•>]+|\(?\d{1,3}\s*[.):\]]|answer\s*\d*\s*:)\s*", re.IGNORECASE)
_QUOTES = "\"'`“”‘’*"  # also markdown bold/italics around a whole answer
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_REFUSAL = re.compile(
    r"\b(?:i['’]?m sorry|i am sorry|i apologi[sz]e|i can ?not|i can['’]?t|i['’]?m unable|i am unable|"
    r"i['’]?m not able|i don['’]?t know|i do not know|as an ai|language model)\b",
    re.IGNORECASE,
)
_PREAMBLE = re.compile(r"^(?:sure|certainly|of course|okay|ok|here are|here['’]s|below are)\b", re.IGNORECASE)


@dataclass(frozen=True)
class ClassDescriptions:
    """Descriptions per class, where each class's came from (``"llm"``/``"templates"``), and why any fell back."""

    prompts: dict[str, tuple[str, ...]]
    source: dict[str, str]
    errors: dict[str, str] = field(default_factory=dict)

    def as_prompts(self) -> dict[str, list[str]]:
        """For ``FewShotClassifier(prompts=...)`` / ``ClipExpert.class_weights_from_prompts``."""
        return {c: list(p) for c, p in self.prompts.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "prompts": self.as_prompts(),
            "source": dict(self.source),
            "errors": dict(self.errors),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassDescriptions:
        if data.get("format", FORMAT) != FORMAT:
            raise ConfigError(f"not a {FORMAT} record: format={data.get('format')!r}")
        return cls(
            prompts={c: tuple(p) for c, p in data["prompts"].items()},
            source=dict(data["source"]),
            errors=dict(data.get("errors", {})),
        )


def describe_classes(
    classnames: Sequence[str],
    chat_model: BaseChatModel | None,
    *,
    questions: Sequence[str] = DEFAULT_QUESTIONS,
    answers_per_question: int = 10,
    cache_dir: str | Path | None = None,
    templates: str | Sequence[str] = "simple",
    max_concurrency: int = 4,
    progress: bool = False,
) -> ClassDescriptions:
    """Ask ``chat_model`` every question about every class; classes it can't describe get ``templates``.

    ``questions`` contain ``{}`` (the class name) and optionally ``{article}``. ``templates`` is
    ``"simple"``/``"openai"`` (open_clip's sets) or ``"… {} …"`` strings, always after ``"a photo of a {}."``.
    """
    names = list(dict.fromkeys(classnames))
    if not names or not all(isinstance(c, str) and c.strip() for c in names):
        raise ConfigError("classnames must be a non-empty list of non-empty strings")
    if not questions or not all(_valid_question(q) for q in questions):
        raise ConfigError("questions must contain '{}' (the class name), e.g. 'What does {article} {} look like?'")
    if answers_per_question < 1:
        raise ConfigError(f"answers_per_question must be >= 1, got {answers_per_question}")
    template_set(templates)  # validate now, not at the first fallback

    prompts: dict[str, tuple[str, ...]] = {}
    source: dict[str, str] = {}
    errors: dict[str, str] = {}
    cache = DescriptionCache(cache_dir) if cache_dir is not None else None
    identity = model_identity(chat_model) if chat_model is not None else None

    iterator: Iterable[str] = names
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(names, desc="describing classes", unit="class")
    for name in iterator:
        answers: list[str] = []
        reason = "no chat model"
        if chat_model is not None:
            answers, failures = _ask(
                chat_model, identity, name, questions, answers_per_question, cache, max_concurrency
            )
            answers = _dedupe(answers)
            if failures and answers:
                # Some questions still answered: keep them, but say so.
                log.warning("class %r: %d of %d questions failed: %s", name, len(failures), len(questions), failures[0])
            reason = "; ".join(dict.fromkeys(failures)) if failures else "no usable answer in the model's replies"
        if answers:
            prompts[name], source[name] = tuple(answers), "llm"
            continue
        prompts[name], source[name] = template_prompts(name, templates), "templates"
        if chat_model is not None:
            errors[name] = reason
            log.warning("class %r falls back to prompt templates: %s", name, reason)
    return ClassDescriptions(prompts=prompts, source=source, errors=errors)


def template_prompts(classname: str, templates: str | Sequence[str] = "simple") -> tuple[str, ...]:
    """``"a photo of a {c}."`` then open_clip's templates (``"simple"``: its 7-template ensemble)."""
    texts = [f"a photo of a {classname}."]
    texts += [t(classname) if callable(t) else t.format(classname) for t in template_set(templates)]
    return tuple(dict.fromkeys(texts))


def model_identity(chat_model: BaseChatModel) -> dict[str, Any]:
    """What makes two chat models give different answers: class, ``_llm_type``, model name, identifying params.

    ``_identifying_params`` is langchain's own notion (provider models put the model name and sampling
    settings there); values that aren't JSON become their type name, so secrets and object addresses
    never reach a cache key. A custom chat model should list its sampling settings there too.
    """
    name = next(
        (v for v in (getattr(chat_model, a, None) for a in ("model", "model_name", "model_id")) if isinstance(v, str)),
        None,
    )
    if name is None:
        try:  # private, but it is where providers put their canonical model name
            name = chat_model._get_ls_params().get("ls_model_name")
        except Exception:  # identity is best-effort; the class and params still count
            name = None
    params = json.loads(
        json.dumps(dict(chat_model._identifying_params), sort_keys=True, default=lambda o: f"<{type(o).__name__}>")
    )
    cls = type(chat_model)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "llm_type": chat_model._llm_type, "model": name, **params}


def parse_answers(reply: str, classname: str, limit: int | None = None) -> list[str]:
    """Clean one reply into descriptions: one per line, markers/quotes/preambles/refusals dropped, tied to the class."""
    text = _THINK.sub("", reply)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) == 1:  # a paragraph instead of a list: its sentences are the answers
        lines = re.split(r"(?<=[.!?])\s+(?=[A-Z\"“])", lines[0])
    spoken = _spoken(classname)
    mention = re.compile(rf"(?<!\w){re.escape(spoken)}(?:e?s)?(?!\w)", re.IGNORECASE)
    answers: list[str] = []
    for line in lines:
        answer = _MARKER.sub("", line.strip()).strip().strip(_QUOTES).strip()
        answer = re.sub(r"\s+", " ", re.sub(r"[\"”’']+([.!?])$", r"\1", answer))  # '"A dog".' -> 'A dog.'
        if (
            len(answer.split()) < MIN_WORDS
            or answer.endswith((":", "?"))  # a heading, or the question echoed back
            or _PREAMBLE.match(answer)
            or _REFUSAL.search(answer)
        ):
            continue
        if answer[-1] not in ".!?":
            answer += "."
        if not mention.search(answer):  # CLIP must know what "it" is
            answer = f"{spoken}: {answer}"
        answers.append(answer)
    return answers[:limit] if limit is not None else answers


# ---------------------------------------------------------------------------- internals


def _valid_question(question: object) -> bool:
    try:  # the only fields are "{}" and "{article}"
        return isinstance(question, str) and "{}" in question and bool(question.format("x", article="a"))
    except (KeyError, IndexError, ValueError):
        return False


def _spoken(classname: str) -> str:
    return re.sub(r"[_\s]+", " ", classname).strip()  # ImageFolder names: "golden_retriever"


def _article(spoken: str) -> str:
    return "an" if spoken[:1].lower() in "aeiou" else "a"


def _messages(classname: str, question: str, n: int) -> list[BaseMessage]:
    spoken = _spoken(classname)
    article = _article(spoken)
    asked = question.format(spoken, article=article)
    return [HumanMessage(INSTRUCTION.format(question=asked, n=n, article=article, name=spoken))]


def _ask(
    chat_model: BaseChatModel,
    identity: Mapping[str, Any] | None,
    classname: str,
    questions: Sequence[str],
    n: int,
    cache: DescriptionCache | None,
    max_concurrency: int,
) -> tuple[list[str], list[str]]:
    """All answers for one class (cached replies first, one batched call for the rest) and the failures."""
    keys = [
        {"model": identity, "class": classname, "question": q, "answers": n, "instruction": INSTRUCTION}
        for q in questions
    ]
    # The raw reply is cached, not the parsed answers, so better cleaning applies without new calls.
    replies: list[str | None] = [cache.get(k) if cache is not None else None for k in keys]
    missing = [i for i, r in enumerate(replies) if r is None]
    failures: list[str] = []
    if missing:
        # batch() runs the calls concurrently (a thread pool) and, with return_exceptions, one failing
        # question doesn't lose the others' answers.
        outputs = chat_model.batch(
            [_messages(classname, questions[i], n) for i in missing],
            config={"max_concurrency": max_concurrency},
            return_exceptions=True,
        )
        for i, out in zip(missing, outputs):
            if isinstance(out, Exception):
                failures.append(f"{type(out).__name__}: {out}")
                continue  # never cached: the next run asks again
            replies[i] = out.text if isinstance(out, BaseMessage) else str(out)
            if cache is not None:
                cache.put(keys[i], replies[i])
    answers = [a for r in replies if r for a in parse_answers(r, classname, limit=n)]
    return answers, failures


def _dedupe(answers: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for a in answers:
        norm = re.sub(r"\W+", " ", a.lower()).strip()
        if norm not in seen:
            seen.add(norm)
            out.append(a)
    return out
