"""The captioner and the dense captioner, with the real BLIP architecture and random weights.

No captioning weights exist offline, so :func:`tiny_models.build_tiny_blip` saves a tiny
``BlipForConditionalGeneration`` + ``BlipProcessor`` with ``save_pretrained`` and the tests load it
exactly as a user would load a real checkpoint directory. Its weights are redrawn large enough that
captions depend on the image (checked below), so batching and ordering bugs cannot hide behind
identical captions. The dense captioner composes it with the real YOLOv8n INT8 detector.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import SEP_ID, build_tiny_blip

from cache.keys import feature_key
from experts import (
    Caption,
    ConfigError,
    RegionCaption,
    RegionCaptions,
    WeightsNotFoundError,
    create_expert,
)
from experts.dense_captioner import regions_from_florence
from experts.images import load_image

MAX_NEW_TOKENS = 5
HUB_ID = "Salesforce/blip-image-captioning-base"


@pytest.fixture(scope="session")
def tiny_blip_dir(tmp_path_factory):
    return build_tiny_blip(tmp_path_factory.mktemp("tiny_blip") / "blip")


def make_captioner(weights, **kwargs):
    opts = {"offline": True, "device": "cpu", "max_new_tokens": MAX_NEW_TOKENS, **kwargs}
    return create_expert("captioner", weights=str(weights), **opts)


@pytest.fixture(scope="module")
def captioner(tiny_blip_dir):
    return make_captioner(tiny_blip_dir).load()


@pytest.fixture(scope="session")
def ant_jpg(hymenoptera):
    return sorted((hymenoptera / "val" / "ants").glob("*.jpg"))[0]


@pytest.fixture(scope="module")
def three_images(bus_jpg, zidane_jpg, ant_jpg):
    return [bus_jpg, zidane_jpg, ant_jpg]


@pytest.fixture(scope="module")
def batch_results(captioner, three_images):
    return captioner.run(three_images)


# --------------------------------------------------------------------------- captioner


def test_batch_of_real_images_gives_one_caption_each_in_order(batch_results, three_images):
    """Three photos in one batch → three ok Caption evidences, in input order, with decoded plain text."""
    assert [r.index for r in batch_results] == [0, 1, 2]
    assert [r.source for r in batch_results] == [str(p) for p in three_images]
    for r in batch_results:
        assert r.ok and isinstance(r.evidence, Caption)
        assert isinstance(r.evidence.text, str) and r.evidence.text
        assert r.evidence.text == r.evidence.text.strip()
        assert "[" not in r.evidence.text  # special tokens ([DEC], [SEP], [PAD]) are not decoded into the text
        assert isinstance(r.evidence.score, float) and r.evidence.score < 0  # mean log-probability


def test_tiny_model_captions_depend_on_the_image(batch_results):
    """The stand-in model is not degenerate: different photos get different captions."""
    assert len({r.evidence.text for r in batch_results}) > 1


def test_greedy_captions_are_deterministic(captioner, three_images, batch_results):
    """Greedy decoding: captioning the same batch again gives the same texts and scores."""
    again = captioner.run(three_images)
    assert [r.evidence.text for r in again] == [r.evidence.text for r in batch_results]
    assert [r.evidence.score for r in again] == pytest.approx([r.evidence.score for r in batch_results], abs=1e-5)


def test_batched_captions_equal_single_image_captions(captioner, three_images, batch_results):
    """Captioning in a batch gives exactly the text each image gets alone."""
    alone = [captioner(p) for p in three_images]
    assert [c.text for c in alone] == [r.evidence.text for r in batch_results]
    assert [c.score for c in alone] == pytest.approx([r.evidence.score for r in batch_results], abs=1e-4)


def test_corrupt_and_missing_files_fail_alone_in_order(captioner, bus_jpg, zidane_jpg, tmp_path, batch_results):
    """A garbage file and a missing path fail with their reason codes; the good images keep their captions."""
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\x00\x17 definitely not a JPEG \xff" * 40)
    missing = tmp_path / "missing.jpg"
    results = captioner.run([bus_jpg, garbage, missing, zidane_jpg])
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert [r.ok for r in results] == [True, False, False, True]
    assert [r.reason for r in results] == [None, "not_an_image", "missing", None]
    assert results[1].evidence is None and "garbage.jpg" in results[1].error
    assert results[2].evidence is None and "missing.jpg" in results[2].error
    assert results[0].evidence.text == batch_results[0].evidence.text  # bus
    assert results[3].evidence.text == batch_results[1].evidence.text  # zidane


@pytest.mark.parametrize("prompt", ["a picture of", "A Picture of"])
def test_prompt_echo_is_stripped_from_the_caption(tiny_blip_dir, bus_jpg, prompt):
    """BLIP echoes a conditional prompt; the caption is only the continuation (prompt matched case-insensitively)."""
    cap = make_captioner(tiny_blip_dir, prompt=prompt)
    text = cap(bus_jpg).text
    inputs = cap.processor(images=[load_image(bus_jpg).image], text=[prompt], return_tensors="pt")
    ids = cap.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS)
    raw = cap.processor.batch_decode(ids, skip_special_tokens=True)[0]
    assert raw.startswith("a picture of ")  # the model really echoes the (lower-cased) prompt ...
    assert text and not text.lower().startswith("a picture of")  # ... and the expert removes it
    assert text == raw[len("a picture of") :].strip()
    assert cap.config["prompt"] == prompt


def test_prompt_echo_is_stripped_when_the_tokenizer_respaces_it(tiny_blip_dir, bus_jpg):
    """A prompt ending in punctuation is still removed from the caption."""
    text = make_captioner(tiny_blip_dir, prompt="a picture of:")(bus_jpg).text
    assert not text.startswith("a picture of")


def test_caption_score_does_not_depend_on_batch_neighbours(tiny_blip_dir, three_images):
    """A caption that ends early gets the same mean log-probability in a batch as alone."""
    cap = make_captioner(tiny_blip_dir, max_new_tokens=8).load()
    with torch.no_grad():
        cap.model.text_decoder.cls.predictions.bias[SEP_ID] = 2.0  # make [SEP] likely: some captions end early
    batch = [r.evidence for r in cap.run(three_images)]
    if len({len(c.text.split()) for c in batch}) < 2:
        pytest.fail("setup: expected captions of different lengths in one batch")
    alone = [cap(p) for p in three_images]
    assert [c.text for c in batch] == [c.text for c in alone]  # the texts are right ...
    assert [c.score for c in batch] == pytest.approx([c.score for c in alone], abs=1e-4)  # ... the scores are not


# --------------------------------------------------------------------------- weights and identity


def test_uncached_hub_id_offline_raises_weights_not_found_on_load(tmp_path, monkeypatch):
    """Offline, a hub id that is not in the local HF cache fails at load with WeightsNotFoundError naming it."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))  # guaranteed not cached
    cap = create_expert("captioner", weights=HUB_ID, offline=True, device="cpu")
    assert cap.weights.kind == "hub"  # nothing is resolved at construction for a hub id
    with pytest.raises(WeightsNotFoundError, match=HUB_ID) as info:
        cap.load()
    assert "save_pretrained" in str(info.value)  # the message says what to do offline


def test_missing_local_dir_raises_at_construction(tmp_path):
    """A weights path that does not exist is refused at construction, and the message names the path."""
    with pytest.raises(WeightsNotFoundError, match="/nonexistent/blip"):
        create_expert("captioner", weights="/nonexistent/blip", offline=True, device="cpu")


@pytest.mark.parametrize("bad", [{"max_new_tokens": 0}, {"num_beams": 0}, {"weights": None}])
def test_invalid_settings_are_config_errors(tiny_blip_dir, bad):
    """Zero tokens, zero beams or no weights at all are rejected before anything is loaded."""
    kwargs = {"weights": str(tiny_blip_dir), "offline": True, "device": "cpu", **bad}
    with pytest.raises(ConfigError):
        create_expert("captioner", **kwargs)


def test_identity_and_store_key_change_with_generation_settings(tiny_blip_dir):
    """max_new_tokens and prompt are in the identity, so they change the store key; the weights tag stays."""
    a, same = make_captioner(tiny_blip_dir), make_captioner(tiny_blip_dir)
    longer = make_captioner(tiny_blip_dir, max_new_tokens=MAX_NEW_TOKENS + 1)
    prompted = make_captioner(tiny_blip_dir, prompt="a picture of")
    assert a.config["max_new_tokens"] == MAX_NEW_TOKENS and longer.config["max_new_tokens"] == MAX_NEW_TOKENS + 1
    assert a.config != longer.config
    assert a.weights_tag == longer.weights_tag and a.weights_tag.startswith("blip/@")
    sha = "ab" * 32
    keys = {feature_key(sha, e.identity) for e in (a, longer, prompted)}
    assert len(keys) == 3
    assert feature_key(sha, same.identity) == feature_key(sha, a.identity)


# --------------------------------------------------------------------------- dense captioner


@pytest.fixture(scope="module")
def bus_image(bus_jpg):
    return load_image(bus_jpg).image


@pytest.fixture(scope="module")
def bus_detections(yolo, bus_jpg):
    return yolo(bus_jpg)


def make_dense(yolo, captioner, **kwargs):
    return create_expert("dense_captioner", detector=yolo, captioner=captioner, offline=True, device="cpu", **kwargs)


@pytest.fixture(scope="module")
def dense_bus(yolo, captioner, bus_jpg):
    return make_dense(yolo, captioner)(bus_jpg)


def expected_boxes(detections, *, min_box_size=16, max_regions=10):
    keep = [d for d in detections.items if min(d.xyxy[2] - d.xyxy[0], d.xyxy[3] - d.xyxy[1]) >= min_box_size]
    return keep[:max_regions]


def padded_crop(image, box, padding=0.1):
    x1, y1, x2, y2 = box
    px, py = (x2 - x1) * padding, (y2 - y1) * padding
    w, h = image.size
    return image.crop((max(0, int(x1 - px)), max(0, int(y1 - py)), min(w, int(x2 + px)), min(h, int(y2 + py))))


def test_dense_regions_are_the_detector_boxes_with_crop_captions(dense_bus, bus_detections, bus_image, captioner):
    """Each region is a detector box (same order, label, score) captioned from its 10%-padded crop."""
    want = expected_boxes(bus_detections)
    assert isinstance(dense_bus, RegionCaptions) and dense_bus.image_size == (810, 1080)
    assert len(want) >= 4
    assert [r.xyxy for r in dense_bus.items] == [d.xyxy for d in want]
    assert [r.label for r in dense_bus.items] == [d.label for d in want]
    assert [r.score for r in dense_bus.items] == [d.score for d in want]
    assert {r.label for r in dense_bus.items} == {"person", "bus"}
    crop_captions = captioner.predict([padded_crop(bus_image, d.xyxy) for d in want])
    assert [r.caption for r in dense_bus.items] == [c.text for c in crop_captions]
    assert all(isinstance(r.caption, str) for r in dense_bus.items)  # the random model may say only specials


def test_dense_min_box_size_drops_small_boxes(yolo, captioner, bus_jpg, bus_detections):
    """Only boxes at least min_box_size wide and tall become regions."""
    got = make_dense(yolo, captioner, min_box_size=300)(bus_jpg)
    want = expected_boxes(bus_detections, min_box_size=300)
    assert 0 < len(want) < len(bus_detections.items)  # the filter really removes something here
    assert [r.xyxy for r in got.items] == [d.xyxy for d in want]
    assert all(min(x2 - x1, y2 - y1) >= 300 for x1, y1, x2, y2 in (r.xyxy for r in got.items))


def test_dense_max_regions_caps_the_count(yolo, captioner, bus_jpg, dense_bus):
    """max_regions=2 keeps the two most confident regions, with the same captions as uncapped."""
    got = make_dense(yolo, captioner, max_regions=2)(bus_jpg)
    assert len(dense_bus.items) > 2
    assert got.items == dense_bus.items[:2]


def test_dense_whole_image_adds_a_full_frame_region(yolo, captioner, bus_jpg, dense_bus):
    """whole_image=True appends one region covering the whole image, captioned like the whole photo."""
    got = make_dense(yolo, captioner, whole_image=True)(bus_jpg)
    assert got.items[:-1] == dense_bus.items
    full = got.items[-1]
    assert full.xyxy == (0.0, 0.0, 810.0, 1080.0) and full.label == "image" and full.score == 1.0
    assert full.caption == captioner(bus_jpg).text


def test_dense_bad_input_fails_alone(yolo, captioner, bus_jpg, tmp_path, dense_bus):
    """A missing file in a dense batch fails alone; the good image keeps all its regions."""
    results = make_dense(yolo, captioner).run([tmp_path / "nope.jpg", bus_jpg])
    assert [r.ok for r in results] == [False, True] and results[0].reason == "missing"
    assert results[1].evidence == dense_bus


def test_dense_identity_combines_both_experts(yolo, captioner, tiny_blip_dir):
    """weights_tag names both sub-experts' weights; a captioner setting changes the dense identity too."""
    dense = make_dense(yolo, captioner)
    assert dense.weights_tag == f"{yolo.weights_tag}+{captioner.weights_tag}"
    assert "yolov8n_int8.tflite@" in dense.weights_tag and "blip/@" in dense.weights_tag
    assert dense.config["captioner"] == captioner.identity and dense.config["detector"] == yolo.identity
    other = make_dense(yolo, make_captioner(tiny_blip_dir, max_new_tokens=MAX_NEW_TOKENS + 1))
    assert feature_key("ab" * 32, dense.identity) != feature_key("ab" * 32, other.identity)


def test_regions_from_florence_parses_boxes_and_labels():
    """Florence-2's parsed dict becomes RegionCaptions with float boxes, stripped captions and score 1.0."""
    parsed = {"bboxes": [[1, 2, 3, 4]], "labels": ["a dog"]}
    assert regions_from_florence(parsed, (640, 480)) == RegionCaptions(
        (640, 480), (RegionCaption((1.0, 2.0, 3.0, 4.0), "a dog", 1.0, ""),)
    )
