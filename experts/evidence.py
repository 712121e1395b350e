"""Evidence: what an expert says about one image.

Every evidence type is a small frozen dataclass with ``to_dict``/``from_dict``
that round-trips through JSON, tagged by a ``type`` field so a stored or queued
result can be turned back into the right class with :func:`evidence_from_dict`.

Boxes are always pixel ``(x1, y1, x2, y2)`` in the coordinates of the original
(EXIF-corrected) image.

>>> d = Detection(xyxy=(10.0, 20.0, 110.0, 220.0), label="person", score=0.9, class_id=0)
>>> Detection.from_dict(d.to_dict()) == d
True
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

Box = tuple[float, float, float, float]

_EVIDENCE_TYPES: dict[str, type] = {}


def _evidence(cls):
    """Register an evidence class under its ``kind`` for :func:`evidence_from_dict`."""
    _EVIDENCE_TYPES[cls.kind] = cls
    return cls


def evidence_from_dict(data: dict[str, Any]):
    """Rebuild any evidence object from its ``to_dict()`` form."""
    try:
        cls = _EVIDENCE_TYPES[data["type"]]
    except KeyError as exc:
        raise ValueError(f"unknown evidence type in {sorted(data)!r}: {data.get('type')!r}") from exc
    return cls.from_dict(data)


def _box(values) -> Box:
    x1, y1, x2, y2 = (float(v) for v in values)
    return (x1, y1, x2, y2)


@dataclass(frozen=True)
class Detection:
    """One detected object: pixel ``xyxy`` box, label, confidence, class index."""

    xyxy: Box
    label: str
    score: float
    class_id: int = -1

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.xyxy
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    def to_dict(self) -> dict[str, Any]:
        return {"xyxy": list(self.xyxy), "label": self.label, "score": self.score, "class_id": self.class_id}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Detection:
        return cls(_box(data["xyxy"]), str(data["label"]), float(data["score"]), int(data.get("class_id", -1)))


@_evidence
@dataclass(frozen=True)
class Detections:
    """All detections in one image, most confident first."""

    kind: ClassVar[str] = "detections"
    image_size: tuple[int, int]  # (width, height)
    items: tuple[Detection, ...] = ()

    def count(self, label: str) -> int:
        return sum(1 for d in self.items if d.label == label)

    def labels(self) -> list[str]:
        return sorted({d.label for d in self.items})

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "image_size": list(self.image_size), "items": [d.to_dict() for d in self.items]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Detections:
        w, h = data["image_size"]
        return cls((int(w), int(h)), tuple(Detection.from_dict(d) for d in data["items"]))


@_evidence
@dataclass(frozen=True, eq=False)
class Features:
    """A feature vector (and optionally patch tokens) from an encoder.

    ``vector`` is 1-D float32; it is L2-normalized when ``normalized`` is true.
    ``patches`` is ``(num_patches, dim)`` when the expert was asked for them.
    """

    kind: ClassVar[str] = "features"
    vector: np.ndarray
    normalized: bool = True
    patches: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(self.vector.shape[-1])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Features):
            return NotImplemented
        same_patches = (self.patches is None and other.patches is None) or (
            self.patches is not None and other.patches is not None and np.array_equal(self.patches, other.patches)
        )
        return self.normalized == other.normalized and np.array_equal(self.vector, other.vector) and same_patches

    __hash__ = None  # arrays are mutable; features are compared, not hashed

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind, "vector": self.vector.tolist(), "normalized": self.normalized}
        if self.patches is not None:
            out["patches"] = self.patches.tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Features:
        patches = data.get("patches")
        return cls(
            np.asarray(data["vector"], dtype=np.float32),
            bool(data.get("normalized", True)),
            None if patches is None else np.asarray(patches, dtype=np.float32),
        )


@_evidence
@dataclass(frozen=True)
class Caption:
    """A caption for a whole image; ``score`` is the mean token log-probability when known."""

    kind: ClassVar[str] = "caption"
    text: str
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "text": self.text, "score": self.score}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Caption:
        score = data.get("score")
        return cls(str(data["text"]), None if score is None else float(score))


@dataclass(frozen=True)
class RegionCaption:
    """A caption for one region: the region's box, its caption and the box's confidence."""

    xyxy: Box
    caption: str
    score: float
    label: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"xyxy": list(self.xyxy), "caption": self.caption, "score": self.score, "label": self.label}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegionCaption:
        return cls(_box(data["xyxy"]), str(data["caption"]), float(data["score"]), str(data.get("label", "")))


@_evidence
@dataclass(frozen=True)
class RegionCaptions:
    """Dense captions of one image, most confident region first."""

    kind: ClassVar[str] = "region_captions"
    image_size: tuple[int, int]
    items: tuple[RegionCaption, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "image_size": list(self.image_size), "items": [r.to_dict() for r in self.items]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegionCaptions:
        w, h = data["image_size"]
        return cls((int(w), int(h)), tuple(RegionCaption.from_dict(r) for r in data["items"]))


@_evidence
@dataclass(frozen=True)
class Classification:
    """Top-k labels with probabilities (zero-shot CLIP, an ImageNet head, a few-shot model)."""

    kind: ClassVar[str] = "classification"
    labels: tuple[str, ...]
    scores: tuple[float, ...]
    source: str = ""  # which head produced it, e.g. "clip-zero-shot"
    extras: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def top(self) -> tuple[str, float]:
        return self.labels[0], self.scores[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "labels": list(self.labels),
            "scores": list(self.scores),
            "source": self.source,
            "extras": self.extras,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Classification:
        return cls(
            tuple(str(x) for x in data["labels"]),
            tuple(float(x) for x in data["scores"]),
            str(data.get("source", "")),
            dict(data.get("extras", {})),
        )


# --------------------------------------------------------------------------- array codec
# The feature store holds arrays only. Features are stored as their float
# vectors (with patch tokens as extra rows); every other evidence type as its
# UTF-8 JSON bytes in a uint8 array. No pickle anywhere.


def evidence_to_array(evidence) -> np.ndarray:
    """Encode evidence for the feature store (see :func:`evidence_from_array`)."""
    if isinstance(evidence, Features):
        if evidence.patches is None:
            return np.asarray(evidence.vector, dtype=np.float32)
        return np.concatenate([evidence.vector[None, :], evidence.patches]).astype(np.float32)
    blob = json.dumps(evidence.to_dict(), separators=(",", ":")).encode()
    return np.frombuffer(blob, dtype=np.uint8).copy()


def evidence_from_array(array: np.ndarray, *, normalized: bool = True):
    """Decode what :func:`evidence_to_array` produced."""
    if array.dtype == np.uint8:
        return evidence_from_dict(json.loads(array.tobytes().decode()))
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 1:
        return Features(array, normalized)
    return Features(np.ascontiguousarray(array[0]), normalized, np.ascontiguousarray(array[1:]))
