"""Linear-probe head: multinomial logistic regression on the concatenated normalized features.

The baseline every few-shot paper has to beat (CLIP's "linear probe"), and often the
strongest head when the support set is a few hundred samples of good features. The
inverse regularization ``C`` is chosen on a validation split from :data:`LINEAR_CS`;
every augmented view of a support image is one training sample.

>>> import torch
>>> x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
>>> head = fit_linear(x, torch.tensor([0, 0, 1, 1]), 2, c=10.0)
>>> head.logits(torch.tensor([[1.0, 0.0]])).argmax().item()
0
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

#: C (inverse L2 strength) candidates: features are unit-norm per expert, so useful C runs high.
LINEAR_CS = tuple(float(c) for c in np.geomspace(0.1, 1e4, 11))


@dataclass(frozen=True)
class LinearHead:
    weight: torch.Tensor  # (C, D)
    bias: torch.Tensor  # (C,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", self.weight.float().contiguous())
        object.__setattr__(self, "bias", self.bias.float().contiguous())

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features.float() @ self.weight.T + self.bias


def _model(c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=2000, tol=1e-4)


def _head(model, num_classes: int) -> LinearHead:
    coef = torch.from_numpy(np.asarray(model.coef_, dtype=np.float32))
    bias = torch.from_numpy(np.asarray(model.intercept_, dtype=np.float32))
    if num_classes == 2 and coef.shape[0] == 1:  # sklearn's binary model is one logit z: softmax([0, z]) = σ(z)
        coef = torch.cat([torch.zeros_like(coef), coef])
        bias = torch.cat([torch.zeros_like(bias), bias])
    return LinearHead(coef, bias)


def fit_linear(features: torch.Tensor, labels: torch.Tensor, num_classes: int, *, c: float = 1.0) -> LinearHead:
    """Logistic regression on ``(N, D)`` features; every class needs ≥ 1 sample."""
    present = torch.unique(labels)
    if len(present) != num_classes:
        raise ValueError(f"the linear head needs every one of {num_classes} classes, got {present.tolist()}")
    from threadpoolctl import threadpool_limits

    # A few hundred samples: a second BLAS thread only waits on the first (measured: 50-100x slower per fit
    # when the cores are busy).
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # lbfgs "did not converge" at the largest C: the val choice judges it
        model = _model(c).fit(features.float().numpy(), labels.numpy())
    return _head(model, num_classes)


def search_linear_c(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    val_features: torch.Tensor,
    val_labels: torch.Tensor,
    cs: Sequence[float] = LINEAR_CS,
) -> tuple[LinearHead, float, float]:
    """The head with the best validation accuracy over ``cs`` (ties go to the smaller C), its C and accuracy."""
    best: tuple[float, float, LinearHead] | None = None
    for c in sorted(cs):
        head = fit_linear(features, labels, num_classes, c=c)
        acc = float((head.logits(val_features).argmax(-1) == val_labels).float().mean())
        if best is None or acc > best[0]:
            best = (acc, c, head)
    assert best is not None, "cs must not be empty"
    return best[2], best[1], best[0]
