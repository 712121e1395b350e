"""easy-VQA (PyPI ``easy-vqa==1.0``, MIT): 64×64 images of one coloured shape, with questions.

Four question kinds, told apart by their templates:

==========  ===============================================  ==================
kind        example                                          answers
==========  ===============================================  ==================
shape       "what shape is in the image?", "what is the      circle, rectangle,
            red shape?"                                       triangle
color       "what color is the triangle?"                    8 colours
presence    "is there a red shape?", "is a circle present?"  yes / no
negated     "is there not a black shape in the image?",      yes / no
            "is no circle present?"
==========  ===============================================  ==================

:func:`stratified_sample` draws a fixed, seeded sample with the same number of
questions of each kind; :func:`attribute_set` gives labelled *train* images for a
few-shot shape or colour classifier (labels read from the train questions' answers);
:func:`tool_only_answer` is the fixed program that answers from the two classifiers'
labels — the ceiling a planner using those tools can reach.

>>> question_kind("is there not a black shape in the image?")
'negated'
>>> tool_only_answer("is there not a black shape in the image?", shape="circle", color="red")
'yes'
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

from experts.errors import ConfigError
from workflows.datasets import LabelledImages

SHAPES = ("circle", "rectangle", "triangle")
COLORS = ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow")
KINDS = ("shape", "color", "presence", "negated")

Split = Literal["train", "test"]
Attribute = Literal["shape", "color"]


@dataclass(frozen=True)
class VQAQuestion:
    """One easy-VQA question: image path, question, gold answer, kind, and the answers it admits."""

    image: str
    question: str
    answer: str
    kind: str
    image_id: int

    @property
    def choices(self) -> tuple[str, ...]:
        return {"shape": SHAPES, "color": COLORS}.get(self.kind, ("yes", "no"))


def _package():
    try:
        import easy_vqa
    except ImportError as exc:
        raise ConfigError("the easy-VQA benchmark needs its data: pip install easy-vqa==1.0") from exc
    return easy_vqa


def question_kind(question: str) -> str:
    """``shape``, ``color``, ``presence`` or ``negated`` (see the module docstring)."""
    q = question.strip().lower()
    if q.startswith("what"):
        return "color" if "color" in q else "shape"
    if re.search(r"\b(not|no)\b", q):
        return "negated"
    return "presence"


def load_questions(split: Split = "test") -> list[VQAQuestion]:
    """Every question of a split, in the package's order."""
    ev = _package()
    texts, answers, ids = ev.get_test_questions() if split == "test" else ev.get_train_questions()
    paths = ev.get_test_image_paths() if split == "test" else ev.get_train_image_paths()
    return [VQAQuestion(paths[i], q, a, question_kind(q), int(i)) for q, a, i in zip(texts, answers, ids)]


def stratified_sample(
    n: int, *, seed: int = 0, split: Split = "test", balance_answers: bool = False
) -> list[VQAQuestion]:
    """``n`` questions, as equal a share of each kind as ``n`` allows, drawn with ``random.Random(seed)``.

    The same ``(n, seed)`` always gives the same questions, in the same order. ``balance_answers`` also
    splits each yes/no kind's share equally between "yes" and "no": easy-VQA's own mix is 82 % "no" for
    presence and 82 % "yes" for negated questions, so a model trained on it can score 82 % on those kinds
    by answering from the question's wording alone (a bridge trained for 45 min did exactly that). Use it
    for training samples; test samples keep the dataset's own mix.
    """
    if n < len(KINDS):
        raise ConfigError(f"sample at least {len(KINDS)} questions (one per kind), got {n}")
    by_kind: dict[str, list[VQAQuestion]] = defaultdict(list)
    for q in load_questions(split):
        by_kind[q.kind].append(q)
    rng = random.Random(seed)
    picked: list[VQAQuestion] = []
    for i, kind in enumerate(KINDS):
        share = n // len(KINDS) + (1 if i < n % len(KINDS) else 0)
        if balance_answers and kind in ("presence", "negated"):
            for j, answer in enumerate(("yes", "no")):
                pool = [q for q in by_kind[kind] if q.answer == answer]
                picked += rng.sample(pool, share // 2 + (share % 2 if j == 0 else 0))
        else:
            picked += rng.sample(by_kind[kind], share)
    rng.shuffle(picked)
    return picked


def image_attributes(split: Split = "train") -> dict[int, dict[str, str]]:
    """image id → {"shape": ..., "color": ...}, as far as the split's questions reveal them."""
    found: dict[int, dict[str, str]] = defaultdict(dict)
    for q in load_questions(split):
        if q.kind in ("shape", "color"):
            found[q.image_id][q.kind] = q.answer
        elif q.answer == "yes" and q.kind == "presence":  # "is there a red shape?" → yes: the colour is red
            word = _attribute_word(q.question)
            if word is not None:
                found[q.image_id][word[0]] = word[1]
    return dict(found)


def attribute_set(
    attribute: Attribute, *, shots: int, seed: int = 0, split: Split = "train", skip: int = 0
) -> LabelledImages:
    """``shots`` labelled images per class of ``attribute`` (shape or colour), drawn with ``seed``.

    ``skip`` leaves out the first ``skip`` images of each class's shuffled list, so that
    ``skip=shots`` gives a disjoint set (e.g. a validation split).
    """
    classnames = SHAPES if attribute == "shape" else COLORS
    paths = _package().get_train_image_paths() if split == "train" else _package().get_test_image_paths()
    by_class: dict[str, list[int]] = defaultdict(list)
    for image_id, attrs in sorted(image_attributes(split).items()):
        if attribute in attrs:
            by_class[attrs[attribute]].append(image_id)
    rng = random.Random(f"{seed}-{attribute}")
    chosen_paths, labels = [], []
    for label, name in enumerate(classnames):
        ids = by_class[name][:]
        rng.shuffle(ids)
        ids = ids[skip : skip + shots]
        if len(ids) < shots:
            raise ConfigError(f"easy-VQA {split}: only {len(ids)} images of {attribute} {name!r}, wanted {shots}")
        chosen_paths += [paths[i] for i in ids]
        labels += [label] * len(ids)
    return LabelledImages(tuple(chosen_paths), tuple(labels), classnames)


def _attribute_word(question: str) -> tuple[str, str] | None:
    """The colour or shape a presence question asks about: ("color", "red") or ("shape", "circle")."""
    words = re.findall(r"[a-z]+", question.lower())
    for w in words:
        if w in COLORS:
            return "color", w
        if w in SHAPES:
            return "shape", w
    return None


def tool_only_answer(question: str, *, shape: str, color: str) -> str:
    """The answer a fixed program gives from the shape and colour classifiers' labels."""
    kind = question_kind(question)
    if kind == "shape":
        return shape
    if kind == "color":
        return color
    asked = _attribute_word(question)
    if asked is None:
        raise ConfigError(f"cannot tell what {question!r} asks about")
    present = (color if asked[0] == "color" else shape) == asked[1]
    return "yes" if present != (kind == "negated") else "no"


__all__ = [
    "COLORS",
    "KINDS",
    "SHAPES",
    "VQAQuestion",
    "attribute_set",
    "image_attributes",
    "load_questions",
    "question_kind",
    "stratified_sample",
    "tool_only_answer",
]
