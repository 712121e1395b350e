"""The real YOLOv8n INT8 detector (TFLite, from ../shared/weights) on real photos."""

from __future__ import annotations

import pytest

from experts import ConfigError, Detections, create_expert
from experts.drawing import draw_boxes
from experts.images import load_image


def test_finds_the_bus_and_the_people(yolo, bus_jpg):
    dets = yolo(bus_jpg)
    assert isinstance(dets, Detections) and dets.image_size == (810, 1080)
    assert dets.count("bus") == 1
    assert dets.count("person") >= 3  # four people, the one cut by the left edge is a weak detection
    bus = next(d for d in dets.items if d.label == "bus")
    assert bus.score > 0.5
    x1, y1, x2, y2 = bus.xyxy
    # the bus spans almost the full width, in the middle band of the picture
    assert x1 < 60 and x2 > 750 and 150 < y1 < 300 and 700 < y2 < 800
    people = [d for d in dets.items if d.label == "person" and d.score > 0.5]
    assert len(people) == 3
    for p in people:
        x1, y1, x2, y2 = p.xyxy
        assert 0 <= x1 < x2 <= 810 and 0 <= y1 < y2 <= 1080
        assert (y2 - y1) > 1.5 * (x2 - x1)  # standing people are tall boxes
    assert [d.score for d in dets.items] == sorted((d.score for d in dets.items), reverse=True)


def test_batch_matches_single_images_and_keeps_order(yolo, bus_jpg, zidane_jpg):
    batch = yolo.run([zidane_jpg, bus_jpg])
    assert [r.evidence for r in batch] == [yolo(zidane_jpg), yolo(bus_jpg)]
    assert batch[0].evidence.count("person") == 2


def test_confidence_and_class_filters(yolo_weights, bus_jpg):
    strict = create_expert("yolo", weights=str(yolo_weights), conf=0.8, device="cpu", offline=True)(bus_jpg)
    assert all(d.score >= 0.8 for d in strict.items) and strict.count("bus") == 1
    only_bus = create_expert("yolo", weights=str(yolo_weights), classes=["bus"], device="cpu", offline=True)(bus_jpg)
    assert only_bus.labels() == ["bus"]


def test_unknown_class_name_is_a_config_error(yolo_weights, bus_jpg):
    det = create_expert("yolo", weights=str(yolo_weights), classes=["unicorn"], device="cpu", offline=True)
    with pytest.raises(ConfigError, match="unknown class 'unicorn'"):
        det.predict([load_image(bus_jpg).image])


def test_bad_thresholds_are_rejected(yolo_weights):
    with pytest.raises(ConfigError, match="conf and iou"):
        create_expert("yolo", weights=str(yolo_weights), conf=1.5, offline=True)


def test_a_corrupt_image_fails_alone(yolo, bus_jpg, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(bus_jpg.read_bytes()[:5000])
    results = yolo.run([bus_jpg, bad, bus_jpg])
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].reason == "truncated" and results[1].index == 1
    assert results[2].evidence.count("bus") == 1


def test_identity_changes_with_settings(yolo_weights):
    a = create_expert("yolo", weights=str(yolo_weights), offline=True, device="cpu")
    b = create_expert("yolo", weights=str(yolo_weights), conf=0.5, offline=True, device="cpu")
    assert a.identity["weights"] == b.identity["weights"] == a.weights_tag
    assert a.weights_tag.startswith("yolov8n_int8.tflite@")
    assert a.identity["config"]["conf"] == 0.25 and b.identity["config"]["conf"] == 0.5


def test_drawn_boxes_change_the_image_only_at_the_boxes(yolo, bus_jpg):
    img = load_image(bus_jpg).image
    dets = yolo(bus_jpg)
    drawn = draw_boxes(img, dets)
    assert drawn.size == img.size
    x1, y1, _, _ = (int(v) for v in dets.items[0].xyxy)
    assert drawn.getpixel((x1, y1 + 40)) != img.getpixel((x1, y1 + 40))  # on the left edge of the box
    assert drawn.getpixel((400, 1050)) == img.getpixel((400, 1050))  # far from every box
