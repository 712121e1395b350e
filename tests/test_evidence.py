"""Evidence types round-trip through JSON exactly; the registry creates experts by name."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experts import (
    Caption,
    Classification,
    ConfigError,
    Detection,
    Detections,
    Features,
    ItemResult,
    RegionCaption,
    RegionCaptions,
    create_expert,
    evidence_from_dict,
    list_experts,
)

EXAMPLES = [
    Detections(
        (640, 480), (Detection((1.5, 2.0, 30.0, 40.0), "person", 0.9, 0), Detection((0, 0, 5, 5), "bus", 0.5, 5))
    ),
    Features(np.array([0.6, 0.8], dtype=np.float32)),
    Features(np.array([1.0, 0.0], dtype=np.float32), True, np.arange(6, dtype=np.float32).reshape(3, 2)),
    Caption("a bus on a street", -0.42),
    Caption("no score"),
    RegionCaptions((10, 10), (RegionCaption((1, 1, 5, 5), "a man", 0.8, "person"),)),
    Classification(("bus", "car"), (0.9, 0.1), "clip-zero-shot", {"templates": 80}),
]


@pytest.mark.parametrize("evidence", EXAMPLES, ids=lambda e: type(e).__name__)
def test_json_round_trip(evidence):
    text = json.dumps(evidence.to_dict())
    assert evidence_from_dict(json.loads(text)) == evidence


def test_item_result_round_trip():
    ok = ItemResult(0, "a.jpg", "ab" * 32, Caption("x"))
    bad = ItemResult(1, "b.jpg", error="b.jpg: no such file", reason="missing")
    for item in (ok, bad):
        assert ItemResult.from_dict(json.loads(json.dumps(item.to_dict()))) == item
    assert ok.unwrap() == Caption("x")
    with pytest.raises(Exception, match="no such file"):
        bad.unwrap()


def test_detections_helpers():
    dets = EXAMPLES[0]
    assert dets.count("person") == 1 and dets.labels() == ["bus", "person"]
    assert dets.items[0].area == pytest.approx(28.5 * 38.0)


def test_unknown_evidence_type():
    with pytest.raises(ValueError, match="unknown evidence type"):
        evidence_from_dict({"type": "hologram"})


def test_registry_lists_and_rejects():
    assert {"yolo", "clip", "dinov2", "timm", "captioner", "dense_captioner"} <= set(list_experts())
    with pytest.raises(ConfigError, match="unknown expert 'nope'.*yolo"):
        create_expert("nope")
