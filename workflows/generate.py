"""The "Generate" step of CaFo: extra support images from a text-to-image model, filtered by CLIP.

CaFo ("Prompt, Generate, then Cache", CVPR 2023) enlarges a small support set with
synthetic images of each class (DALL-E in the paper) and keeps only those CLIP agrees
with: an image is kept when CLIP's zero-shot classifier puts it in the class it was
generated for, and the most confident ``keep`` per class survive. Off by default; it
costs a text-to-image model and minutes per class.

Any object with ``generate(prompt, n, seed) -> list[PIL.Image]`` is a generator;
:class:`DiffusersGenerator` wraps a diffusers pipeline when that package is installed.

    gen = DiffusersGenerator("stabilityai/sd-turbo", num_inference_steps=1, guidance_scale=0.0)
    synthetic = generate_support(support.classnames, gen, clip, out_dir="gen/", per_class=8, keep=4)
    clf.fit(support + synthetic.images, val)      # generated images join the cache like real ones
    synthetic.report                                # per class: generated, kept, CLIP scores

Images are written as PNG under ``out_dir/<class>/`` with names that encode the prompt
and seed, so a rerun reuses them instead of generating again, and the feature store
keys them by content like any other image.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image

from experts import ConfigError
from experts.clip import ClipExpert
from workflows.datasets import LabelledImages

log = logging.getLogger(__name__)


@runtime_checkable
class ImageGenerator(Protocol):
    """Text → images. ``name`` identifies the model (it is part of every generated file's name)."""

    name: str

    def generate(self, prompt: str, n: int, seed: int) -> list[Image.Image]: ...


class DiffusersGenerator:
    """A diffusers text-to-image pipeline (``AutoPipelineForText2Image``), loaded on first use.

    ``model`` is a hub id or a local directory; offline, only a local directory or the HF cache is read.
    """

    def __init__(
        self,
        model: str,
        *,
        device: str = "cpu",
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        size: int = 512,
        offline: bool = False,
        torch_dtype: str = "float32",
    ) -> None:
        self.model, self.device, self.offline = model, device, offline
        self.num_inference_steps, self.guidance_scale, self.size, self.torch_dtype = (
            num_inference_steps,
            guidance_scale,
            size,
            torch_dtype,
        )
        self.name = f"diffusers:{model}:{num_inference_steps}:{guidance_scale}:{size}"
        self._pipe = None

    def _pipeline(self):
        if self._pipe is None:
            try:
                from diffusers import AutoPipelineForText2Image
            except ImportError as err:
                raise ConfigError("the Generate step needs diffusers: pip install diffusers accelerate") from err
            self._pipe = AutoPipelineForText2Image.from_pretrained(
                self.model, torch_dtype=getattr(torch, self.torch_dtype), local_files_only=self.offline
            ).to(self.device)
        return self._pipe

    def generate(self, prompt: str, n: int, seed: int) -> list[Image.Image]:
        pipe = self._pipeline()
        generator = torch.Generator(device="cpu").manual_seed(seed)
        out = pipe(
            prompt,
            num_images_per_prompt=n,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            height=self.size,
            width=self.size,
            generator=generator,
        )
        return list(out.images)


@dataclass(frozen=True)
class GeneratedSupport:
    """Kept images (labelled like the real support) and, per class, what was generated and scored."""

    images: LabelledImages
    report: dict[str, dict[str, Any]] = field(default_factory=dict)


def generate_support(
    classnames: Sequence[str],
    generator: ImageGenerator,
    clip: ClipExpert,
    *,
    out_dir: str | Path,
    per_class: int = 8,
    keep: int = 4,
    prompts: Mapping[str, str] | None = None,
    seed: int = 0,
) -> GeneratedSupport:
    """Generate ``per_class`` images per class, keep the ``keep`` CLIP is most sure belong to it.

    ``prompts`` maps a class to its text prompt (default ``"a photo of a {class}."``; CaFo uses an
    LLM-written description here). A class whose generation fails keeps nothing and says why in
    ``report``; the other classes are unaffected.
    """
    if keep > per_class or keep < 1:
        raise ConfigError(f"keep must be in 1..per_class ({per_class}), got {keep}")
    out = Path(out_dir)
    weights = clip.class_weights(list(classnames))
    paths: list[str] = []
    labels: list[int] = []
    report: dict[str, dict[str, Any]] = {}
    for c, classname in enumerate(classnames):
        prompt = (prompts or {}).get(classname) or f"a photo of a {classname}."
        try:
            files = _generated_files(generator, prompt, per_class, seed, out / _safe(classname))
        except Exception as err:  # noqa: BLE001 - one class's failure must not lose the others
            log.warning("generation failed for class %r: %s", classname, err)
            report[classname] = {"prompt": prompt, "generated": 0, "kept": [], "error": f"{type(err).__name__}: {err}"}
            continue
        probs = clip.zero_shot_logits(clip.encode([Image.open(f).convert("RGB") for f in files]), weights).softmax(-1)
        agree = probs.argmax(-1) == c
        ranked = sorted((i for i in range(len(files)) if agree[i]), key=lambda i: -float(probs[i, c]))[:keep]
        paths += [str(files[i]) for i in ranked]
        labels += [c] * len(ranked)
        report[classname] = {
            "prompt": prompt,
            "generated": len(files),
            "kept": [files[i].name for i in ranked],
            "scores": {f.name: round(float(probs[i, c]), 4) for i, f in enumerate(files)},
        }
    return GeneratedSupport(LabelledImages(tuple(paths), tuple(labels), tuple(classnames)), report)


def _generated_files(generator: ImageGenerator, prompt: str, n: int, seed: int, folder: Path) -> list[Path]:
    """The PNGs for (generator, prompt, seed), generating only if some are missing."""
    stem = hashlib.sha256(f"{generator.name}\n{prompt}\n{seed}".encode()).hexdigest()[:16]
    files = [folder / f"gen-{stem}-{i:03d}.png" for i in range(n)]
    if all(f.is_file() for f in files):
        return files
    images = generator.generate(prompt, n, seed)
    if len(images) != n:
        raise ConfigError(f"generator {generator.name!r} returned {len(images)} images, asked for {n}")
    folder.mkdir(parents=True, exist_ok=True)
    for image, f in zip(images, files):
        tmp = f.with_suffix(".tmp")
        image.convert("RGB").save(tmp, format="PNG")
        tmp.replace(f)  # a crash mid-write never leaves a half PNG under the final name
    return files


def _safe(classname: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in classname) or "_"
