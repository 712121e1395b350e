"""A colour-histogram feature expert: the colours of what stands out from the background.

ImageNet encoders are trained to ignore colour shifts (colour jitter is part of their
augmentation), so a few-shot cache on their features confuses red with brown, and
gray with black. This expert is the classic alternative: a joint RGB histogram
(``bins`` per channel) of the *foreground* pixels, L2-normalized, so the few-shot
cache compares colour distributions directly.

Foreground = pixels farther than ``threshold`` (max over R, G, B) from the background
colour, which is the median of the border pixels. With no such pixel (a plain image),
every pixel counts. No weights: the tag is ``"fixed"``.

>>> expert = create_expert("color_histogram")                    # doctest: +SKIP
>>> expert("shape.png").dim                                      # doctest: +SKIP
64
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from experts.base import FeatureExpert
from experts.errors import ConfigError
from experts.registry import register_expert


@register_expert
class ColorHistogram(FeatureExpert):
    """Joint RGB histogram of the foreground pixels (``bins``³ dims)."""

    name = "color_histogram"

    def __init__(self, *, bins: int = 4, threshold: int = 48, size: int = 64, **kwargs: Any) -> None:
        if not 2 <= bins <= 16:
            raise ConfigError(f"color_histogram: bins must be 2..16, got {bins}")
        if not 0 <= threshold < 256:
            raise ConfigError(f"color_histogram: threshold must be 0..255, got {threshold}")
        self.bins, self.threshold, self.size = bins, threshold, size
        kwargs.setdefault("weights", None)
        super().__init__(**kwargs)

    @property
    def weights_tag(self) -> str:
        return "fixed"  # an algorithm, not a model: nothing to version but the config

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "bins": self.bins, "threshold": self.threshold, "size": self.size}

    def _load(self) -> Any:
        return "color-histogram"  # nothing to load

    @property
    def transform(self):
        def to_tensor(image: Image.Image) -> torch.Tensor:
            # Nearest keeps pure colours pure (no blended pixels from resampling).
            small = image.convert("RGB").resize((self.size, self.size), Image.Resampling.NEAREST)
            return torch.from_numpy(np.asarray(small, dtype=np.uint8).copy()).permute(2, 0, 1)

        return to_tensor

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 → ``(B, bins³)`` foreground colour histograms (fractions)."""
        pixels = batch.to(torch.int64)
        border = torch.cat(
            [pixels[:, :, 0, :], pixels[:, :, -1, :], pixels[:, :, :, 0], pixels[:, :, :, -1]], dim=-1
        )  # (B, 3, 4·side)
        background = border.median(dim=-1).values[:, :, None, None]
        foreground = (pixels - background).abs().amax(dim=1) > self.threshold  # (B, H, W)
        plain = ~foreground.flatten(1).any(dim=1)
        foreground[plain] = True
        q = (pixels * self.bins) // 256  # (B, 3, H, W) bin per channel
        index = (q[:, 0] * self.bins + q[:, 1]) * self.bins + q[:, 2]  # (B, H, W)
        hist = torch.zeros(len(batch), self.bins**3, dtype=torch.float32)
        hist.scatter_add_(1, index.flatten(1), foreground.flatten(1).float())
        return hist / hist.sum(dim=1, keepdim=True).clamp_min(1.0)
