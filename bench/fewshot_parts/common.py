"""Small helpers the parts of ``bench/fewshot.py`` share: unit vectors, class prototypes, timing.

>>> import torch
>>> prototypes(torch.eye(2), torch.tensor([0, 1]), 2).shape
torch.Size([2, 2])
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import torch

MIB = 1024 * 1024


def timed(fn: Callable[[], Any]) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def normalized(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def prototypes(keys: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(D, C)`` normalized class means of normalized keys (the prior FewShotClassifier builds without CLIP)."""
    sums = torch.zeros(num_classes, keys.shape[1]).index_add_(0, labels, normalized(keys))
    return normalized(sums / torch.bincount(labels, minlength=num_classes)[:, None]).T.contiguous()


def standardize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + eps)


def mb(nbytes: float) -> str:
    return f"{nbytes / MIB:.1f} MiB"
