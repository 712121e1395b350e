"""Images with different patch counts in one batch: zero-padding plus the key-padding mask a query bridge reads."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from experts.errors import ConfigError

__all__ = ["pad_features"]


def pad_features(features: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One batch tensor, and a key-padding mask (``True`` = padding) when the images' patch counts differ.

    >>> feats, mask = pad_features([torch.ones(4, 3), torch.ones(1, 3)])
    >>> tuple(feats.shape), mask.tolist()
    ((2, 4, 3), [[False, False, False, False], [False, True, True, True]])
    """
    if isinstance(features, torch.Tensor):
        return features, None
    items = [torch.as_tensor(f) for f in features]
    if not items:
        raise ConfigError("no features")
    if len({tuple(t.shape) for t in items}) == 1:
        return torch.stack(items), None
    if any(t.dim() not in (1, 2) for t in items) or len({t.shape[-1] for t in items}) != 1:
        raise ConfigError(
            f"features of one batch must share their last dimension, got {[tuple(t.shape) for t in items]}"
        )
    items = [t if t.dim() == 2 else t[None] for t in items]
    longest = max(t.shape[0] for t in items)
    batch = items[0].new_zeros(len(items), longest, items[0].shape[-1])
    mask = torch.ones(len(items), longest, dtype=torch.bool)
    for i, t in enumerate(items):
        batch[i, : t.shape[0]] = t
        mask[i, : t.shape[0]] = False
    return batch, mask
