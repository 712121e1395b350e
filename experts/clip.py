"""CLIP through ``open_clip``: image features, text features, zero-shot logits.

Weights: an open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b79k"``…),
a local checkpoint file, an ``hf-hub:org/name`` id, or ``None`` (random, for
tests). Prompt templates: ``"openai"`` (the 80 ImageNet templates), ``"simple"``,
or your own ``"a photo of a {}."`` strings.

>>> clip = create_expert("clip", arch="ViT-B-32", weights="openai")             # doctest: +SKIP
>>> clip.zero_shot(["bus.jpg"], ["bus", "cat", "person"])[0].top                 # doctest: +SKIP
('bus', 0.97)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from experts.base import FeatureExpert
from experts.errors import ConfigError
from experts.evidence import Classification
from experts.images import ImageSource
from experts.presets import default_option
from experts.registry import register_expert
from experts.weights import missing_weights_as_error

#: CaFo and Tip-Adapter scale CLIP's cosine logits by 100 (CLIP's learned logit scale).
CLIP_LOGIT_SCALE = 100.0


def template_set(templates: str | Sequence[str]) -> list:
    """Resolve ``"openai"`` / ``"simple"`` to open_clip's template sets, or validate custom ones."""
    from open_clip import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    if isinstance(templates, str):
        sets = {"openai": OPENAI_IMAGENET_TEMPLATES, "simple": SIMPLE_IMAGENET_TEMPLATES}
        if templates in sets:
            return list(sets[templates])
        templates = [templates]
    templates = list(templates)
    if not templates or not all(isinstance(t, str) and "{}" in t for t in templates):
        raise ConfigError("templates must be 'openai', 'simple' or strings containing '{}', e.g. 'a photo of a {}.'")
    return templates


@register_expert
class ClipExpert(FeatureExpert):
    """open_clip model: ``run`` gives image :class:`Features`; ``zero_shot`` gives :class:`Classification`."""

    name = "clip"
    offline_hint = (
        "Download the open_clip checkpoint for this arch/tag (e.g. open_clip_pytorch_model.bin) and name it: "
        "EXPERTBRIDGE_CLIP_WEIGHTS=PATH (with EXPERTBRIDGE_CLIP_ARCH), or weights=PATH in Python."
    )
    stored_fields = {**FeatureExpert.stored_fields, "arch": "name", "templates": "value"}

    def __init__(
        self,
        *,
        arch: str = default_option("clip", "arch"),
        weights: str | None = default_option("clip", "weights"),
        templates: str | Sequence[str] = "openai",
        **kwargs: Any,
    ) -> None:
        self.arch = arch
        self.templates = template_set(templates)
        super().__init__(weights=weights, **kwargs)
        self._text_cache: dict[tuple, torch.Tensor] = {}

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "arch": self.arch}

    def _load(self):
        import open_clip

        ref = self.weights
        name = f"hf-hub:{ref.value}" if ref.kind == "hub" else self.arch
        pretrained = ref.value if ref.kind in ("tag", "path") else None
        with missing_weights_as_error(ref, expert=self.name, hint=self.offline_hint):
            net, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, device=self.device, weights_only=True
            )
            self._tokenizer = open_clip.get_tokenizer(name)
        self._transform = preprocess
        return net.eval().requires_grad_(False)

    @property
    def transform(self):
        _ = self.model
        return self._transform

    @property
    def tokenizer(self):
        _ = self.model
        return self._tokenizer

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(batch)

    # ------------------------------------------------------------------ text side

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """``(T, D)`` L2-normalized text features on CPU."""
        with torch.inference_mode():
            tokens = self.tokenizer(list(texts)).to(self.device)
            return self.model.encode_text(tokens, normalize=True).float().cpu()

    def class_weights(self, classnames: Sequence[str], templates: str | Sequence[str] | None = None) -> torch.Tensor:
        """``(D, C)`` zero-shot classifier: template-averaged, normalized text features per class."""
        tmpl = self.templates if templates is None else template_set(templates)
        key = (tuple(classnames), tuple(map(str, tmpl)))
        if key not in self._text_cache:
            from open_clip import build_zero_shot_classifier

            with torch.inference_mode():
                w = build_zero_shot_classifier(self.model, self.tokenizer, list(classnames), tmpl, device=self.device)
            self._text_cache[key] = w.float().cpu()
        return self._text_cache[key]

    def class_weights_from_prompts(self, prompts: Mapping[str, Sequence[str]]) -> torch.Tensor:
        """``(D, C)`` classifier from per-class descriptions (CuPL / CaFo's LLM prompts), in dict order."""
        columns = []
        for classname, texts in prompts.items():
            if not texts:
                raise ConfigError(f"no prompts for class {classname!r}")
            mean = self.encode_text(list(texts)).mean(0)
            columns.append(mean / mean.norm())
        return torch.stack(columns, dim=1)

    # ------------------------------------------------------------------ zero-shot

    def zero_shot_logits(self, image_features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``100 · f · W``: the zero-shot prior used by CaFo and Tip-Adapter."""
        return CLIP_LOGIT_SCALE * image_features @ weights

    def zero_shot(
        self,
        images: Sequence[ImageSource],
        classnames: Sequence[str],
        *,
        topk: int = 5,
        templates: str | Sequence[str] | None = None,
    ) -> list[Classification]:
        """Zero-shot top-k labels for each image (raises on a bad image; use ``run`` for batches)."""
        weights = self.class_weights(classnames, templates)
        feats = self.encode([self.load_image(src).image for src in images])
        probs = self.zero_shot_logits(feats, weights).softmax(-1)
        out = []
        for p in probs:
            values, idx = p.topk(min(topk, len(classnames)))
            out.append(
                Classification(tuple(classnames[i] for i in idx.tolist()), tuple(values.tolist()), "clip-zero-shot")
            )
        return out
