"""Linear-probe head: multinomial logistic regression on the concatenated normalized features.

The baseline every few-shot paper has to beat (CLIP's "linear probe"), and often the
strongest head when the support set is a few hundred samples of good features. The inverse
regularization ``C`` is chosen on a validation split from :data:`LINEAR_CS`, together with the
training samples (the plain support images, or every augmented view of them as one sample each)
and whether the unit-norm features are standardized (per-dimension mean and scale of the
training samples, folded into the head's weights): :func:`search_linear`.

Measured on DTD-10 (C on ``val``, 3 seeds): at 16 shots standardizing added up to 1.1 points
(Lite0 + Lite2), at 1-4 shots it cost 2-20 (a scale from 10 samples is noise), and validation did
not always catch it; so the caller offers standardization only from 8 shots per class (see
``cache.fit_heads.STANDARDIZE_MIN_SHOTS``). Samples and C are left to validation.

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

from errors import ConfigError

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


def _model(c: float, warm_start: bool = False):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=2000, tol=1e-4, warm_start=warm_start)


def _head(model, num_classes: int, mean: np.ndarray, scale: np.ndarray, basis: np.ndarray | None = None) -> LinearHead:
    # the model saw ((x - mean) / scale) @ basisᵀ: fold that into the weights so the head takes raw features
    coef = np.asarray(model.coef_, dtype=np.float64)
    coef = (coef if basis is None else coef @ basis) / scale
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
    return fit_linear_path(features, labels, num_classes, cs=(c,), standardize=standardize)[0]


def fit_linear_path(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    cs: Sequence[float] = LINEAR_CS,
    standardize: bool = False,
) -> list[LinearHead]:
    """One head per C of ``cs`` (in that order), each fit started from the previous C's solution.

    A regularization path: neighbouring Cs have nearby optima, so warm starts cut lbfgs's
    iterations (measured: the 9-point path in a fraction of the time of 9 cold fits).
    """
    present = torch.unique(labels)
    if len(present) != num_classes:
        raise ConfigError(f"the linear head needs every one of {num_classes} classes, got {present.tolist()}")
    from threadpoolctl import threadpool_limits

    heads = []
    # A few hundred samples: a second BLAS thread only waits on the first (measured: 50-100x slower per fit
    # when the cores are busy).
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # lbfgs "did not converge" at the largest C: the val choice judges it
        x = features.double().numpy()
        mean, scale = (x.mean(0), x.std(0)) if standardize else (np.zeros(x.shape[1]), np.ones(x.shape[1]))
        scale[scale < 1e-12] = 1.0  # a constant dimension carries nothing; keep it at weight 0
        x, y = (x - mean) / scale, labels.numpy()
        basis = row_space(x)
        model = _model(cs[0], warm_start=True)
        for c in cs:
            model.set_params(C=c)
            model.fit(x @ basis.T, y)
            heads.append(_head(model, num_classes, mean, scale, basis))
    return heads


def row_space(x: np.ndarray) -> np.ndarray:
    """``(r, D)`` orthonormal basis of the span of the training rows.

    The L2-penalized optimum's weights lie in that span (the representer theorem: any component
    orthogonal to every training row adds to the penalty and changes no training logit), so fitting on
    the ``r ≤ N`` coordinates and mapping back is the same model. Few-shot means N ≪ D (160 images,
    2560 dimensions): lbfgs then works in a space 8-16x smaller.

    >>> np.abs(row_space(np.array([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]]))).tolist()   # one direction, up to sign
    [[1.0, 0.0, 0.0]]
    """
    if x.shape[0] >= x.shape[1]:
        return np.eye(x.shape[1])
    _, sv, vt = np.linalg.svd(x, full_matrices=False)
    return vt[sv > sv.max() * max(x.shape) * np.finfo(x.dtype).eps]


def search_linear(
    samples: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    val_features: torch.Tensor,
    val_labels: torch.Tensor,
    cs: Sequence[float] = LINEAR_CS,
    standardize: Sequence[bool] = (False, True),
) -> tuple[LinearHead, dict[str, float | str], float]:
    """The head with the best validation accuracy over every (training samples, standardized or not, C),
    its choice and accuracy.

    ``samples`` maps a name (e.g. ``"plain"``, ``"views"``) to ``(features, labels)``; ties go to the
    earlier samples, then unit-norm features, then the smaller C. Each (samples, standardize) pair is
    one regularization path over ``cs`` (:func:`fit_linear_path`).
    """
    best: tuple[float, dict[str, float | str], LinearHead] | None = None
    for name, (features, labels) in samples.items():
        for scaled in standardize:
            path = fit_linear_path(features, labels, num_classes, cs=sorted(cs), standardize=scaled)
            for c, head in zip(sorted(cs), path):
                acc = float((head.logits(val_features).argmax(-1) == val_labels).float().mean())
                if best is None or acc > best[0]:
                    best = (acc, {"samples": name + ("+standardized" if scaled else ""), "C": c}, head)
    assert best is not None, "samples, standardize and cs must not be empty"
    return best[2], best[1], best[0]
