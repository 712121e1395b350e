"""The no-LLM path: counting and presence questions answered straight from the detector.

"How many people are in the image?" needs no language model: detect, count, answer.
:func:`match_question` recognises such questions (only for classes the detector knows);
the planner then answers without a model and labels the trace ``mode="rule"``.

>>> match_question("How many people are there?", ["person", "bus"])
CountQuestion(kind='count', label='person')
>>> match_question("Is there a dog?", ["person", "bus"]) is None    # the detector has no 'dog'
True
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

# Irregular plurals of COCO classes and everyday words for them.
_ALIASES = {
    "people": "person",
    "persons": "person",
    "men": "person",
    "women": "person",
    "children": "person",
    "humans": "person",
    "human": "person",
    "pedestrians": "person",
    "mice": "mouse",
    "knives": "knife",
    "buses": "bus",
    "sheep": "sheep",
    "skis": "skis",
    "scissors": "scissors",
}

_COUNT = re.compile(r"^\s*how many (?P<what>[a-z][a-z \-]*?)(?: are| is| can| do|\?|$)", re.I)
_PRESENCE = re.compile(r"^\s*(?:is|are) there (?:a |an |any |some )?(?P<what>[a-z][a-z \-]*?)(?: in|\?|$)", re.I)


@dataclass(frozen=True)
class CountQuestion:
    kind: Literal["count", "presence"]
    label: str


def _label(words: str, known: set[str]) -> str | None:
    words = words.strip().lower()
    for candidate in (words, _ALIASES.get(words, ""), words[:-2] if words.endswith("es") else "", words[:-1]):
        if candidate and candidate in known:
            return candidate
    return None


def match_question(question: str, labels: Iterable[str]) -> CountQuestion | None:
    """A count/presence question about one detector class, or None (the planner then asks the LLM)."""
    known = {label.lower() for label in labels}
    for kind, pattern in (("count", _COUNT), ("presence", _PRESENCE)):
        m = pattern.match(question)
        if m:
            label = _label(m.group("what"), known)
            return CountQuestion(kind, label) if label else None  # type: ignore[arg-type]
    return None


def answer(question: CountQuestion, count: int) -> tuple[str, str]:
    """(answer, rationale) for a matched question and the detector's count."""
    if question.kind == "count":
        return str(count), f"The object detector found {count} {question.label} detection(s)."
    yes = "yes" if count else "no"
    return yes, f"The object detector found {count} {question.label} detection(s)."
