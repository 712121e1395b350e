"""Linear-probe head: multinomial logistic regression on the concatenated normalized features.

The baseline every few-shot paper has to beat (CLIP's "linear probe"), and often the
strongest head when the support set is a few hundred samples of good features. The inverse
regularization ``C`` is chosen on a validation split from :data:`LINEAR_CS`, together with the
training samples (the plain support images, or every augmented view of them as one sample each)
and whether the unit-norm features are standardized (per-dimension mean and scale of the
training samples, folded into the head's weights): :func:`search_linear`.

Measured on DTD-10 (C on ``val``, 3 seeds): at 16 shots standardizing added 0.5 (Lite0) to 1.3
(Lite0 + Lite2) points, at 1-4 shots it cost up to 7 (a scale from 10 samples is noise); 10
augmented views as samples cost 0.7-1.7 points at 16 shots. So all three are left to validation.

>>> import torch
>>> x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
>>> head = fit_linear(x, torch.tensor([0, 0, 1, 1]), 2, c=10.0)
>>> head.logits(torch.tensor([[1.0, 0.0]])).argmax().item()
0
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

#: C (inverse L2 strength) candidates, a decade apart: small C suits standardized features, large C unit-norm ones
LINEAR_CS = tuple(float(c) for c in np.geomspace(1e-4, 1e4, 9))


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


def _head(model, num_classes: int, mean: np.ndarray, scale: np.ndarray) -> LinearHead:
    # the model saw (x - mean) / scale: fold that into the weights so the head takes raw features
    coef = np.asarray(model.coef_, dtype=np.float64) / scale
    intercept = np.asarray(model.intercept_, dtype=np.float64) - coef @ mean
    weight, bias = torch.from_numpy(coef).float(), torch.from_numpy(intercept).float()
    if num_classes == 2 and weight.shape[0] == 1:  # sklearn's binary model is one logit z: softmax([0, z]) = σ(z)
        weight = torch.cat([torch.zeros_like(weight), weight])
        bias = torch.cat([torch.zeros_like(bias), bias])
    return LinearHead(weight, bias)


def fit_linear(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, *, c: float = 1.0, standardize: bool = False
) -> LinearHead:
    """Logistic regression on ``(N, D)`` features (optionally standardized); every class needs ≥ 1 sample."""
    present = torch.unique(labels)
    if len(present) != num_classes:
        raise ValueError(f"the linear head needs every one of {num_classes} classes, got {present.tolist()}")
    from threadpoolctl import threadpool_limits

    # A few hundred samples: a second BLAS thread only waits on the first (measured: 50-100x slower per fit
    # when the cores are busy).
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # lbfgs "did not converge" at the largest C: the val choice judges it
        x = features.double().numpy()
        mean, scale = (x.mean(0), x.std(0)) if standardize else (np.zeros(x.shape[1]), np.ones(x.shape[1]))
        scale[scale < 1e-12] = 1.0  # a constant dimension carries nothing; keep it at weight 0
        model = _model(c).fit((x - mean) / scale, labels.numpy())
    return _head(model, num_classes, mean, scale)


def search_linear(
    samples: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    val_features: torch.Tensor,
    val_labels: torch.Tensor,
    cs: Sequence[float] = LINEAR_CS,
) -> tuple[LinearHead, dict[str, float | str], float]:
    """The head with the best validation accuracy over every (training samples, standardized or not, C),
    its choice and accuracy.

    ``samples`` maps a name (e.g. ``"plain"``, ``"views"``) to ``(features, labels)``; ties go to the
    earlier samples, then unit-norm features, then the smaller C.
    """
    best: tuple[float, dict[str, float | str], LinearHead] | None = None
    for name, (features, labels) in samples.items():
        for standardize in (False, True):
            for c in sorted(cs):
                head = fit_linear(features, labels, num_classes, c=c, standardize=standardize)
                acc = float((head.logits(val_features).argmax(-1) == val_labels).float().mean())
                if best is None or acc > best[0]:
                    best = (acc, {"samples": name + ("+standardized" if standardize else ""), "C": c}, head)
    assert best is not None, "samples and cs must not be empty"
    return best[2], best[1], best[0]
