"""Hyper-parameter search on a validation split (never on the test split).

CaFo and Tip-Adapter select α and β on the test set; here the caller passes a
validation split, and the search reports what it chose and the whole grid.

>>> import torch
>>> from cache.adapter import AdaptiveCache
>>> k = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
>>> cache = AdaptiveCache({"x": k}, torch.tensor([0, 0, 0, 1, 1, 1]), 2)
>>> result = search_alpha_beta(cache, {"x": k}, torch.tensor([0, 0, 0, 1, 1, 1]))
>>> result.val_accuracy
1.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from cache.adapter import AdaptiveCache, label_sum
from cache.gda import GDAHead

DEFAULT_BETAS = tuple(float(b) for b in np.round(np.linspace(0.5, 12.0, 24), 3))
DEFAULT_ALPHAS = tuple(float(a) for a in np.round(np.geomspace(0.05, 20.0, 25), 4))
#: GDA's α: 1e-4 … 1e2, one point per decade (7 values), the grid of the GDA reference code (Wang et al., ICLR 2024)
GDA_ALPHAS = tuple(10.0**i for i in range(-4, 3))
#: how many paired standard errors a more complex head must win by on validation (the one-SE rule)
ONE_SE = 1.0


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).float().mean()) if len(labels) else float("nan")


def paired_standard_error(correct_a: torch.Tensor, correct_b: torch.Tensor) -> float:
    """Standard error of ``accuracy(a) - accuracy(b)`` measured on the same validation images.

    The per-image differences ``a_i - b_i`` (each -1, 0 or 1) are the sample: their standard
    deviation over ``sqrt(n)``. Two heads that agree on most images have a small standard error
    even on a small split (the paired, McNemar-style comparison), unlike two independent accuracies.

    >>> paired_standard_error(torch.tensor([1, 1, 1, 0]), torch.tensor([1, 1, 0, 0]))
    0.25
    """
    diff = correct_a.double() - correct_b.double()
    return float(diff.std() / np.sqrt(len(diff))) if len(diff) > 1 else 0.0


def choose_within_noise(correct: Sequence[torch.Tensor], k: float = ONE_SE) -> int:
    """Index of the first candidate whose validation accuracy is within ``k`` paired standard errors
    of the best one's: the one-standard-error rule (Breiman et al. 1984; Hastie et al., ESL §7.10).

    ``correct[i]`` is candidate ``i``'s per-image correctness (bool or 0/1) on one validation split,
    candidates in order of preference (the simplest, or a reference such as the linear probe, first). A
    later candidate is taken only when it beats every earlier one by more than the validation split can
    resolve; on a tiny split (8 images) that is almost never.

    >>> simple, better = torch.tensor([1, 1, 0, 0, 1, 1, 1, 1]), torch.tensor([1, 1, 1, 0, 1, 1, 1, 1])
    >>> choose_within_noise([simple, better])   # 1 image of 8: within one standard error (0.125)
    0
    """
    accs = [float(c.double().mean()) for c in correct]
    best = int(np.argmax(accs))
    for i, c in enumerate(correct):
        if accs[i] >= accs[best] - k * paired_standard_error(correct[best], c) - 1e-12:
            return i
    return best  # unreachable: the best is within 0 of itself


@dataclass(frozen=True)
class SearchResult:
    """The selected values, their validation accuracy, and the accuracy grid (betas × alphas)."""

    alpha: float
    beta: float
    val_accuracy: float
    alphas: tuple[float, ...]
    betas: tuple[float, ...]
    grid: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        return {
            "alpha": self.alpha,
            "beta": self.beta,
            "val_accuracy": self.val_accuracy,
            "alphas": list(self.alphas),
            "betas": list(self.betas),
            "grid": self.grid.tolist(),
        }

    def summary(self) -> dict:
        """What was chosen and over what, without the grid itself (:meth:`to_dict` has every cell).

        ``ties`` counts grid points that reached the best validation accuracy: many ties mean the
        choice was made by the cross-entropy tie-break on a flat plateau.
        """
        return {
            "alpha": self.alpha,
            "beta": self.beta,
            "val_accuracy": self.val_accuracy,
            "alphas": {"min": min(self.alphas), "max": max(self.alphas), "points": len(self.alphas)},
            "betas": {"min": min(self.betas), "max": max(self.betas), "points": len(self.betas)},
            "ties": int((self.grid == self.grid.max()).sum()),
        }


@torch.no_grad()
def search_alpha_beta(
    cache: AdaptiveCache,
    features: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    *,
    alphas: Sequence[float] | None = None,
    betas: Sequence[float] = DEFAULT_BETAS,
) -> SearchResult:
    """Grid-search α (prior vs cache) and β (affinity sharpness) for the best validation accuracy.

    Accuracy on a small validation split ties often; ties go to the lowest
    validation cross-entropy (then the first in grid order).

    Without a zero-shot prior α only rescales the logits, so only β is searched (α stays 1).
    """
    feats = {n: torch.nn.functional.normalize(f.float(), dim=-1) for n, f in features.items()}
    prior = cache.prior(feats)
    alphas = tuple(alphas or (DEFAULT_ALPHAS if prior is not None else (1.0,)))
    cosines = {n: feats[n] @ cache.keys_[n].T for n in cache.names}  # computed once for every β
    scale = torch.tensor(alphas, dtype=torch.float32)[:, None, None]
    grid = np.zeros((len(betas), len(alphas)))
    loss = np.zeros_like(grid)
    for bi, beta in enumerate(betas):
        branches = {
            n: label_sum(torch.exp(-beta * (1.0 - cos)), cache.labels, cache.num_classes) for n, cos in cosines.items()
        }
        # logits are prior + α · fused, so every α is one broadcast: (A, N, C) in a few tensor ops, not A loops
        fused = sum(cache.combine(prior, branches, 1.0).branches.values())
        logits = scale * fused if prior is None else prior + scale * fused
        grid[bi] = (logits.argmax(-1) == labels).float().mean(-1).numpy()
        flat = logits.reshape(-1, logits.shape[-1])
        ce = torch.nn.functional.cross_entropy(flat, labels.repeat(len(alphas)), reduction="none")
        loss[bi] = ce.view(len(alphas), -1).mean(-1).numpy()
    best = np.flatnonzero(grid.ravel() == grid.max())
    bi, ai = np.unravel_index(int(best[np.argmin(loss.ravel()[best])]), grid.shape)
    return SearchResult(float(alphas[ai]), float(betas[bi]), float(grid[bi, ai]), alphas, tuple(betas), grid)


@torch.no_grad()
def search_gda_alpha(
    head: GDAHead,
    features: torch.Tensor,
    prior: torch.Tensor | None,
    labels: torch.Tensor,
    alphas: Sequence[float] = GDA_ALPHAS,
) -> tuple[float, float]:
    """GDA's α in ``prior + α · gda_logits``; without a prior any α gives the same argmax (returns 1)."""
    logits = head.logits(features.float())
    if prior is None:
        return 1.0, accuracy(logits, labels)
    scores = [accuracy(prior + a * logits, labels) for a in alphas]
    best = int(np.argmax(scores))
    return float(alphas[best]), float(scores[best])
