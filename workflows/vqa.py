"""Visual question answering data and scoring for learnable bridges.

A VQA pair is an image, a question and a short answer. Pairs come from a file — JSONL
``{"image", "question", "answer"}`` (optionally ``"kind"``) or CSV with those columns, image
paths relative to the file — or straight from easy-VQA (``easy-vqa:train``,
``easy-vqa:test:1000``; see :func:`read_vqa`). The bridge sees ``<image>`` + the question
(:data:`DEFAULT_VQA_PROMPT`) and learns to emit the answer; it is scored by exact match of
normalized answers (:func:`normalize_answer`), overall and per question kind.

>>> normalize_answer("  The Circle. ")
'circle'
>>> score = score_answers([VQAPair("a.png", "what shape is in the image?", "circle")], ["Circle"])
>>> score.accuracy, score.per_kind["shape"]
(1.0, (1, 1))
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from experts.errors import ConfigError
from workflows.easy_vqa import question_kind

__all__ = [
    "DEFAULT_VQA_PROMPT",
    "VQAPair",
    "VQAScore",
    "easy_vqa_pairs",
    "normalize_answer",
    "read_vqa",
    "read_vqa_pairs",
    "score_answers",
]

#: ``{question}`` is replaced by the question; ``<image>`` by the bridge's soft tokens.
DEFAULT_VQA_PROMPT = "<image>{question}"
_ARTICLES = {"a", "an", "the"}


@dataclass(frozen=True)
class VQAPair:
    """One question about one image, with its gold answer; ``kind`` defaults to easy-VQA's question kind."""

    image: str
    question: str
    answer: str
    kind: str = ""

    def __post_init__(self) -> None:
        if not self.kind:
            object.__setattr__(self, "kind", question_kind(self.question))


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and articles dropped, whitespace collapsed (the VQA convention, simplified)."""
    words = re.sub(r"[^\w\s]", " ", str(text).lower()).split()
    return " ".join(w for w in words if w not in _ARTICLES)


def read_vqa_pairs(path: str | Path) -> list[VQAPair]:
    """Pairs from JSONL or CSV (columns ``image``, ``question``, ``answer``, optional ``kind``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"VQA pairs file {path} does not exist")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    else:
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ConfigError(f"{path}: line {n} is not JSON ({err.msg})") from err
    pairs = []
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not all(str(row.get(k) or "").strip() for k in ("image", "question", "answer")):
            raise ConfigError(f"{path}: row {i} needs 'image', 'question' and 'answer'")
        image = Path(row["image"])
        image = image if image.is_absolute() else path.parent / image
        pairs.append(VQAPair(str(image), str(row["question"]), str(row["answer"]), str(row.get("kind") or "")))
    return pairs


def easy_vqa_pairs(
    split: str = "train", limit: int | None = None, *, seed: int = 0, balance_answers: bool = False
) -> list[VQAPair]:
    """easy-VQA questions of ``split``: all of them, or a seeded sample of ``limit`` with equal shares per kind
    (and, with ``balance_answers``, as many "yes" as "no" answers per yes/no kind)."""
    from workflows import easy_vqa

    if split not in ("train", "test"):
        raise ConfigError(f"easy-VQA has splits 'train' and 'test', got {split!r}")
    questions = (
        easy_vqa.load_questions(split)  # type: ignore[arg-type]
        if limit is None
        else easy_vqa.stratified_sample(limit, seed=seed, split=split, balance_answers=balance_answers)  # type: ignore[arg-type]
    )
    return [VQAPair(q.image, q.question, q.answer, q.kind) for q in questions]


def read_vqa(source: str | Path, *, seed: int = 0) -> list[VQAPair]:
    """A pairs file, or ``easy-vqa:SPLIT[:N[:balanced]]`` (N questions sampled with ``seed``, equal shares
    per kind; ``balanced``: as many "yes" as "no" answers per yes/no kind, for training).

    >>> len(read_vqa("easy-vqa:test:8"))  # doctest: +SKIP
    8
    """
    text = str(source)
    if text.startswith("easy-vqa:"):
        parts = text.split(":")
        balanced = len(parts) == 4 and parts[3] == "balanced"
        if (
            len(parts) not in (2, 3, 4)
            or (len(parts) >= 3 and not parts[2].isdigit())
            or (len(parts) == 4 and not balanced)
        ):
            raise ConfigError(
                f"expected easy-vqa:train, easy-vqa:test, easy-vqa:SPLIT:N or easy-vqa:SPLIT:N:balanced, got {text!r}"
            )
        limit = int(parts[2]) if len(parts) >= 3 else None
        return easy_vqa_pairs(parts[1], limit, seed=seed, balance_answers=balanced)
    return read_vqa_pairs(source)


@dataclass
class VQAScore:
    """Exact-match counts: overall, per kind ``(correct, total)``, and the (gold, predicted) confusion counts."""

    correct: int = 0
    total: int = 0
    per_kind: dict[str, tuple[int, int]] = field(default_factory=dict)
    confusion: Counter = field(default_factory=Counter)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def kind_accuracy(self, kind: str) -> float | None:
        correct, total = self.per_kind.get(kind, (0, 0))
        return correct / total if total else None

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "correct": self.correct,
            "total": self.total,
            "per_kind": {
                k: {"correct": c, "total": t, "accuracy": c / t} for k, (c, t) in sorted(self.per_kind.items())
            },
        }


def score_answers(pairs: Sequence[VQAPair], predictions: Sequence[str]) -> VQAScore:
    """Exact match of normalized answers; ``predictions[i]`` answers ``pairs[i]``."""
    if len(pairs) != len(predictions):
        raise ConfigError(f"{len(pairs)} questions but {len(predictions)} answers")
    score = VQAScore()
    counts: dict[str, list[int]] = {}
    for pair, pred in zip(pairs, predictions):
        gold, got = normalize_answer(pair.answer), normalize_answer(pred)
        hit = int(gold == got)
        score.correct += hit
        score.total += 1
        c = counts.setdefault(pair.kind, [0, 0])
        c[0] += hit
        c[1] += 1
        score.confusion[(gold, got)] += 1
    score.per_kind = {k: (c, t) for k, (c, t) in counts.items()}
    return score
