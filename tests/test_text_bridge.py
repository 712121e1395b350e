"""The text bridge: evidence → compact, faithful, deterministic, bounded text."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from bridges.text import BridgeOptions, estimate_tokens, render
from experts import (
    Caption,
    Classification,
    Detection,
    Detections,
    Features,
    ItemResult,
    RegionCaption,
    RegionCaptions,
)

# 900×600 image; the 3×3 grid splits at x = 300, 600 and y = 200, 400.
DETS = Detections(
    (900, 600),
    (
        Detection((850, 10, 890, 50), "person", 0.05, 0),  # top-right, 0.3% of the image
        Detection((300, 200, 600, 400), "person", 0.75, 0),  # center, 11%
        Detection((10, 250, 100, 350), "dog", 0.333, 16),  # middle-left, 1.7%
        Detection((0, 0, 150, 100), "person", 0.9, 0),  # top-left, 2.8%
        Detection((600, 400, 900, 600), "car", 0.75, 2),  # bottom-right, 11%; ties with the center person
    ),
)

DETS_TEXT = """\
[yolo] 5 objects detected in the 900×600 image: person ×3, car ×1, dog ×1.
- person 0.90, top-left, 3% of image
- car 0.75, bottom-right, 11% of image
- person 0.75, center, 11% of image
- dog 0.33, middle-left, 2% of image
- person 0.05, top-right, <1% of image"""


def _many(n: int = 20) -> Detections:
    """``n`` detections with distinct scores, labels cycling over three classes."""
    labels = ("person", "stop sign", "traffic light")
    items = tuple(
        Detection((10.0 * i, 5.0 * i, 10.0 * i + 40, 5.0 * i + 80), labels[i % 3], round(0.95 - 0.04 * i, 3))
        for i in range(n)
    )
    return Detections((640, 480), items)


# --------------------------------------------------------------------------- detections


def test_detections_exact_text_sorted_with_tie_break():
    assert render(DETS, tool="yolo") == DETS_TEXT


def test_detections_without_tool_and_with_threshold():
    text = render(DETS, threshold=0.05)
    assert text.splitlines()[0] == (
        "5 objects detected above confidence 0.05 in the 900×600 image: person ×3, car ×1, dog ×1."
    )


def test_boxes_only_on_request():
    assert "box [" not in render(DETS)
    assert render(DETS, boxes=True) == (
        "5 objects detected in the 900×600 image: person ×3, car ×1, dog ×1. Boxes are pixel [x1, y1, x2, y2].\n"
        "- person 0.90, top-left, 3% of image, box [0, 0, 150, 100]\n"
        "- car 0.75, bottom-right, 11% of image, box [600, 400, 900, 600]\n"
        "- person 0.75, center, 11% of image, box [300, 200, 600, 400]\n"
        "- dog 0.33, middle-left, 2% of image, box [10, 250, 100, 350]\n"
        "- person 0.05, top-right, <1% of image, box [850, 10, 890, 50]"
    )


@pytest.mark.parametrize(
    ("cx", "cy", "where"),
    [
        (50, 50, "top-left"),
        (450, 50, "top-center"),
        (850, 50, "top-right"),
        (50, 300, "middle-left"),
        (450, 300, "center"),
        (850, 300, "middle-right"),
        (50, 550, "bottom-left"),
        (450, 550, "bottom-center"),
        (850, 550, "bottom-right"),
        (300, 200, "center"),  # a centre exactly on a split goes to the later cell
        (899, 599, "bottom-right"),
    ],
)
def test_positions_from_box_centre(cx, cy, where):
    dets = Detections((900, 600), (Detection((cx - 1, cy - 1, cx + 1, cy + 1), "cup", 0.5),))
    assert render(dets).splitlines()[1] == f"- cup 0.50, {where}, <1% of image"


def test_boxes_are_clipped_to_the_image_for_position_and_size():
    dets = Detections((100, 100), (Detection((-50, -50, 150, 40), "sky", 0.6),))
    assert render(dets).splitlines()[1] == "- sky 0.60, top-center, 40% of image"


def test_empty_detections_say_so():
    assert render(Detections((640, 480))) == "No objects detected in the 640×480 image."
    empty = render(Detections((640, 480)), tool="yolo", threshold=0.25)
    assert empty == "[yolo] No objects detected above confidence 0.25 in the 640×480 image."


def test_singular_object():
    dets = Detections((10, 10), (Detection((0, 0, 10, 10), "bus", 0.5),))
    assert render(dets) == "1 object detected in the 10×10 image: bus ×1.\n- bus 0.50, center, 100% of image"


# --------------------------------------------------------------------------- budget


def test_truncation_keeps_the_most_confident_and_says_what_was_omitted():
    dets = _many(20)
    full = render(dets, max_tokens=None)
    assert len(full.splitlines()) == 21 and estimate_tokens(full) > 73
    text = render(dets, max_tokens=73)
    assert text == (
        "20 objects detected in the 640×480 image: person ×7, stop sign ×7, traffic light ×6.\n"
        "- person 0.95, top-left, 1% of image\n"
        "- stop sign 0.91, top-left, 1% of image\n"
        "- traffic light 0.87, top-left, 1% of image\n"
        "- person 0.83, top-left, 1% of image\n"
        "… and 16 more objects (lower confidence) omitted."
    )
    assert estimate_tokens(text) == 73  # the budget is used exactly; one token less drops an object
    assert render(dets, max_tokens=72).splitlines()[-1] == "… and 17 more objects (lower confidence) omitted."


@pytest.mark.parametrize("budget", [1, 2, 5, 10, 15, 20, 25, 30, 45, 60, 100, 200, 1000])
def test_every_text_respects_its_budget(budget):
    evidence = [
        _many(20),
        DETS,
        Detections((640, 480)),
        Caption("a very long caption " * 20, -1.0),
        Classification(tuple(f"class{i}" for i in range(30)), tuple(1.0 / (i + 2) for i in range(30))),
        RegionCaptions((900, 600), tuple(RegionCaption((0, 0, 50, 50), f"thing {i}", 0.9 - i / 100) for i in range(9))),
        Features(np.zeros(768, np.float32)),
    ]
    for ev in evidence:
        text = render(ev, max_tokens=budget)
        assert text and estimate_tokens(text) <= budget, (budget, text)
        if text != render(ev, max_tokens=None):  # truncated: it says so
            assert "omitted" in text or text.endswith("…")


def test_a_real_tokenizer_can_be_plugged_in():
    def words(text: str) -> int:
        return len(text.split())

    text = render(_many(20), max_tokens=40, count_tokens=words)
    assert words(text) <= 40 and text.endswith("more objects (lower confidence) omitted.")
    assert estimate_tokens(text) > 40  # it was the word counter that decided


def test_tiny_budget_keeps_the_counts():
    assert (
        render(DETS, max_tokens=22)
        == "5 objects detected in the 900×600 image: person ×3, car ×1, dog ×1 (details omitted)."
    )


# --------------------------------------------------------------------------- faithfulness, determinism


def test_no_invented_labels_or_scores():
    dets = _many(20)
    text = render(dets, max_tokens=None)
    known, scores = set(dets.labels()), {f"{d.score:.2f}" for d in dets.items}
    header, *lines = text.splitlines()
    groups = dict(re.findall(r"([a-z][a-z ]*?) ×(\d+)", header.split(": ", 1)[1]))
    assert {label: int(c) for label, c in groups.items()} == {label: dets.count(label) for label in known}
    for line in lines:
        label, score = re.match(r"- (.+) (\d\.\d\d), ", line).groups()
        assert label in known and score in scores
    for other in ("car", "dog", "bus", "people", "persons"):
        assert other not in text


def test_deterministic_whatever_the_input_order():
    rng = random.Random(0)
    items = list(DETS.items)
    for _ in range(10):
        rng.shuffle(items)
        assert render(Detections(DETS.image_size, tuple(items)), tool="yolo") == DETS_TEXT


def test_dict_form_and_options_object():
    assert render(DETS.to_dict(), tool="yolo") == DETS_TEXT
    opts = BridgeOptions(tool="yolo", boxes=True)
    assert render(DETS, opts, boxes=False) == DETS_TEXT
    with pytest.raises(ValueError, match="max_tokens"):
        render(DETS, max_tokens=0)
    with pytest.raises(TypeError, match="cannot render"):
        render(object())


# --------------------------------------------------------------------------- other evidence


def test_caption():
    cap = Caption("a red  bus on\na street", -0.4213)
    assert render(cap, tool="blip") == '[blip] Caption: "a red bus on a street" (mean token log-prob -0.42).'
    assert render(Caption("a dog")) == 'Caption: "a dog".'
    assert render(Caption("  ")) == "Caption: (empty)."


def test_region_captions_sorted_with_position_and_size():
    regions = RegionCaptions(
        (900, 600),
        (
            RegionCaption((0, 0, 150, 100), "a man in a hat", 0.8, "person"),
            RegionCaption((600, 400, 900, 600), "a parked red car", 0.95, "car"),
            RegionCaption((300, 200, 600, 400), "a table", 0.8),
        ),
    )
    assert render(regions) == (
        "3 regions captioned in the 900×600 image.\n"
        '- car 0.95, bottom-right, 11% of image: "a parked red car"\n'
        '- 0.80, center, 11% of image: "a table"\n'
        '- person 0.80, top-left, 3% of image: "a man in a hat"'
    )
    assert render(RegionCaptions((900, 600)), threshold=0.3) == (
        "No regions captioned above confidence 0.30 in the 900×600 image."
    )


def test_classification_sorted_with_source():
    cls = Classification(("ant", "bee", "wasp"), (0.07, 0.912, 0.07), "fewshot-cache")
    assert render(cls) == "Top labels (fewshot-cache): bee 0.91, ant 0.07, wasp 0.07."
    assert render(Classification(("bee",), (1.0,)), tool="clip") == "[clip] Top labels: bee 1.00."


def test_classification_truncation():
    labels = tuple(f"class{i:02d}" for i in range(30))
    cls = Classification(labels, tuple(1.0 / (i + 2) for i in range(30)), "clip-zero-shot")
    assert render(cls, max_tokens=33) == (
        "Top labels (clip-zero-shot): class00 0.50, class01 0.33, class02 0.25, class03 0.20, "
        "… and 26 more labels (lower scores) omitted."
    )


def test_features_one_line_no_numbers():
    vec = np.linspace(-1, 1, 512, dtype=np.float32)
    assert render(Features(vec)) == "Image features: a 512-dim vector, L2-normalized (numbers not shown)."
    feats = Features(vec[:384], normalized=False, patches=np.ones((16, 384), np.float32))
    assert (
        render(feats, tool="dinov2")
        == "[dinov2] Image features: a 384-dim vector, with 16 patch tokens (numbers not shown)."
    )


def test_item_results():
    ok = ItemResult(index=0, source="bus.jpg", evidence=DETS)
    assert render(ok, tool="yolo") == DETS_TEXT
    bad = ItemResult(index=1, source="broken.jpg", error="cannot identify image file", reason="decode")
    assert render(bad, tool="yolo") == "[yolo] Failed on broken.jpg: cannot identify image file"


# --------------------------------------------------------------------------- real evidence


def test_real_yolo_on_bus(yolo, bus_jpg):
    dets = yolo(bus_jpg)
    text = render(dets, tool="yolo", threshold=yolo.conf)
    assert "bus" in text
    assert int(re.search(r"person ×(\d+)", text).group(1)) == dets.count("person")
    assert len(text.splitlines()) == 1 + len(dets.items)
    assert text == render(yolo(bus_jpg), tool="yolo", threshold=yolo.conf)
