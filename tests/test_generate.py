"""The Generate hook: generated support images, kept by CLIP agreement, reused on rerun."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from experts import ConfigError, create_expert
from workflows.datasets import LabelledImages
from workflows.generate import DiffusersGenerator, ImageGenerator, generate_support


class ColourGenerator:
    """Deterministic stand-in for a text-to-image model: noisy images whose tint depends on the prompt."""

    name = "colour-stub"

    def __init__(self, fail_on: str | None = None):
        self.calls: list[tuple[str, int, int]] = []
        self.fail_on = fail_on

    def generate(self, prompt: str, n: int, seed: int) -> list[Image.Image]:
        self.calls.append((prompt, n, seed))
        if self.fail_on and self.fail_on in prompt:
            raise RuntimeError("out of GPU memory")
        rng = np.random.default_rng(int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) + seed)
        return [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def clip():
    # 7 prompt templates instead of 80: the class weights (what these tests check against) in 1 s, not 16 s
    return create_expert("clip", arch="RN50", weights=None, templates="simple", device="cpu", offline=True).load()


def test_kept_images_are_the_ones_clip_puts_in_their_class_most_confidently(clip, tmp_path):
    gen = ColourGenerator()
    assert isinstance(gen, ImageGenerator)
    result = generate_support(["ant", "bee"], gen, clip, out_dir=tmp_path, per_class=6, keep=2, seed=3)
    weights = clip.class_weights(["ant", "bee"])
    for c, name in enumerate(["ant", "bee"]):
        files = sorted((tmp_path / name).glob("*.png"))
        assert len(files) == 6
        probs = (100 * clip.encode([Image.open(f).convert("RGB") for f in files]) @ weights).softmax(-1)
        expected = [f.name for i, f in enumerate(files) if probs[i].argmax() == c]
        expected = sorted(expected, key=lambda n: -float(probs[[f.name for f in files].index(n), c]))[:2]
        assert result.report[name]["kept"] == expected
        assert result.report[name]["generated"] == 6
    assert isinstance(result.images, LabelledImages)
    assert result.images.classnames == ("ant", "bee")
    assert [p.rsplit("/", 1)[-1] for p in result.images.paths] == result.report["ant"]["kept"] + result.report["bee"][
        "kept"
    ]
    assert gen.calls == [("a photo of a ant.", 6, 3), ("a photo of a bee.", 6, 3)]


def test_a_rerun_reuses_the_written_images_without_generating(clip, tmp_path):
    first = generate_support(["ant", "bee"], ColourGenerator(), clip, out_dir=tmp_path, per_class=3, keep=1)
    again = ColourGenerator()
    second = generate_support(["ant", "bee"], again, clip, out_dir=tmp_path, per_class=3, keep=1)
    assert again.calls == []
    assert second.images == first.images
    third = generate_support(["ant", "bee"], again, clip, out_dir=tmp_path, per_class=3, keep=1, seed=1)
    assert len(again.calls) == 2  # a new seed is new images
    assert set(third.report["ant"]["scores"]).isdisjoint(first.report["ant"]["scores"])


def test_a_failing_class_keeps_nothing_and_the_others_still_come_back(clip, tmp_path):
    result = generate_support(
        ["ant", "bee"],
        ColourGenerator(fail_on="bee"),
        clip,
        out_dir=tmp_path,
        per_class=4,
        keep=4,
        prompts={"ant": "a macro photo of an ant on a leaf."},
    )
    assert result.report["bee"]["error"] == "RuntimeError: out of GPU memory"
    assert set(result.images.labels) <= {0}
    assert result.report["ant"]["prompt"] == "a macro photo of an ant on a leaf."
    assert not (tmp_path / "bee").exists()


def test_generated_support_joins_real_support(clip, tmp_path, hymenoptera):
    real = LabelledImages((str(next((hymenoptera / "train" / "ants").iterdir())),), (0,), ("ant", "bee"))
    gen = generate_support(["ant", "bee"], ColourGenerator(), clip, out_dir=tmp_path, per_class=2, keep=2)
    joined = real + gen.images
    assert joined.paths[0] == real.paths[0] and len(joined) == 1 + len(gen.images)
    with pytest.raises(ConfigError, match="classes"):
        _ = real + LabelledImages((), (), ("cat",))


def test_keep_must_fit_in_per_class(clip, tmp_path):
    with pytest.raises(ConfigError, match="keep"):
        generate_support(["ant"], ColourGenerator(), clip, out_dir=tmp_path, per_class=2, keep=3)


def test_diffusers_generator_without_diffusers_says_what_to_install():
    gen = DiffusersGenerator("stabilityai/sd-turbo", offline=True)
    assert "sd-turbo" in gen.name
    try:
        import diffusers  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pip install diffusers"):
            gen.generate("a photo of a bee.", 1, 0)
    else:  # installed: offline and not cached must fail loading, never download
        with pytest.raises(Exception):  # noqa: B017
            gen.generate("a photo of a bee.", 1, 0)
