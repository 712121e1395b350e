"""CLIP through open_clip, with the real ViT-B-32 architecture and random weights (no CLIP weights offline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from experts import Classification, ConfigError, Features, WeightsNotFoundError, create_expert
from experts.clip import template_set
from experts.images import load_image


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return create_expert("clip", arch="ViT-B-32", weights=None, device="cpu", offline=True).load()


def test_image_features_shape_norm_and_batching(clip, bus_jpg, zidane_jpg):
    results = clip.run([bus_jpg, zidane_jpg, bus_jpg])
    feats = [r.evidence for r in results]
    assert all(isinstance(f, Features) and f.dim == 512 for f in feats)
    for f in feats:
        assert np.linalg.norm(f.vector) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(feats[0].vector, feats[2].vector, atol=1e-6)
    np.testing.assert_allclose(clip(bus_jpg).vector, feats[0].vector, atol=1e-5)  # batch of 1 == batch of 3


def test_text_features_are_normalized(clip):
    t = clip.encode_text(["a photo of a bus.", "a photo of a dog."])
    assert t.shape == (2, 512)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(2))


def test_class_weights_are_template_averaged_text_features(clip):
    """Checked against a straightforward re-implementation: mean of per-template features, renormalized."""
    templates = ["a photo of a {}.", "a blurry photo of a {}.", "art of the {}."]
    w = clip.class_weights(["bus", "dog"], templates)
    assert w.shape == (512, 2)
    for col, name in enumerate(["bus", "dog"]):
        mean = clip.encode_text([t.format(name) for t in templates]).mean(0)
        torch.testing.assert_close(w[:, col], mean / mean.norm(), atol=1e-5, rtol=1e-4)


def test_openai_templates_are_open_clips_80(clip):
    assert len(template_set("openai")) == 80 and len(template_set("simple")) > 1
    with pytest.raises(ConfigError, match="containing"):
        template_set(["no placeholder here"])


def test_zero_shot_is_softmax_of_100_cosines(clip, bus_jpg):
    names = ["bus", "dog", "person", "car"]
    (res,) = clip.zero_shot([bus_jpg], names, topk=3, templates="simple")
    assert isinstance(res, Classification) and len(res.labels) == 3 and set(res.labels) <= set(names)
    f = clip.encode([load_image(bus_jpg).image])
    probs = (100.0 * f @ clip.class_weights(names, "simple")).softmax(-1)[0]
    expected = probs.topk(3)
    assert list(res.labels) == [names[i] for i in expected.indices.tolist()]
    np.testing.assert_allclose(res.scores, expected.values.numpy(), atol=1e-5)


def test_local_checkpoint_gives_the_same_model(clip, tmp_path, bus_jpg):
    torch.save(clip.model.state_dict(), tmp_path / "clip.pt")
    other = create_expert("clip", arch="ViT-B-32", weights=str(tmp_path / "clip.pt"), device="cpu", offline=True)
    np.testing.assert_allclose(other(bus_jpg).vector, clip(bus_jpg).vector, atol=1e-6)
    assert other.weights_tag.startswith("clip.pt@")


def test_offline_hub_id_is_a_clear_error():
    clip = create_expert("clip", weights="hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", device="cpu", offline=True)
    with pytest.raises(WeightsNotFoundError, match="laion/CLIP-ViT-B-32"):
        clip.load()


def test_device_handling():
    clip = create_expert("clip", weights=None, device="cpu")
    assert clip.device == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            create_expert("clip", weights=None, device="cuda")
    with pytest.raises(ConfigError, match="not a device"):
        create_expert("clip", weights=None, device="toaster")
