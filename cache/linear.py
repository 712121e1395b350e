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

Each path is also fitted *anchored* (:func:`fit_anchored_path`): regularized toward the nearest-centroid
classifier instead of toward zero, so its smallest C is the centroid itself. It comes first in the
search, so where validation is too small to tell the heads apart, ties land on the centroid end. On
ants/bees (8-32 validation images) this took the linear head from 1.7-2.6 points below the centroid at
2, 4 and 16 shots to 0.0, 0.0 and -0.4; on DTD-10 (240) it moved accuracies by -0.9 to +0.3 (README).

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


#: the anchor's logit scale τ is fitted in [0, ANCHOR_MAX_SCALE] (CLIP's logit scale for cosine similarities)
ANCHOR_MAX_SCALE = 100.0
#: τ when no class has two samples to leave one out of (1 shot, plain images): a cosine gap of 0.1 → 1 logit
ANCHOR_DEFAULT_SCALE = 10.0


def fit_anchored_path(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    cs: Sequence[float] = LINEAR_CS,
) -> list[LinearHead]:
    """Logistic regression regularized toward the nearest-centroid classifier instead of toward zero.

    The logits are ``τ · x·Mᵀ + x·Vᵀ + b``: ``M`` holds the unit-norm class means of the samples (the
    centroid classifier) and ``τ`` its scale, fitted alone first (maximum likelihood on the samples);
    then only the deviation is penalized, ``C · Σ CE + ½(‖V‖² + ‖b‖²)``. As C → 0 the head *is* the
    centroid classifier; as C grows it becomes a plain linear probe. When validation cannot tell the Cs
    apart (a handful of images) the smallest C wins the tie, so the head falls back to the centroid
    rather than to an arbitrary fit. This is CLAP's constraint (Silva-Rodríguez et al., CVPR 2024:
    penalize the distance to the zero-shot prototypes) with the class means as the prototypes.
    One head per C of ``cs``, each warm-started from the previous.
    """
    from scipy.optimize import minimize
    from scipy.special import log_softmax

    present = torch.unique(labels)
    if len(present) != num_classes:
        raise ConfigError(f"the linear head needs every one of {num_classes} classes, got {present.tolist()}")
    x, y = features.double().numpy(), labels.numpy()
    means = np.stack([x[y == k].mean(0) for k in range(num_classes)])
    means /= np.linalg.norm(means, axis=1, keepdims=True).clip(1e-12)
    cosines = x @ means.T
    onehot = np.eye(num_classes)[y]
    tau = anchor_scale(x, y, num_classes)
    basis = row_space(x)
    z, offset = x @ basis.T, tau * cosines  # the deviation lives in the samples' span (see row_space)
    shape = (num_classes, z.shape[1])

    def objective(params: np.ndarray, c: float) -> tuple[float, np.ndarray]:
        v, b = params[:v_size].reshape(shape), params[v_size:]
        log_p = log_softmax(offset + z @ v.T + b, axis=1)
        residual = c * (np.exp(log_p) - onehot)  # d(C·Σ CE)/d logits
        # the bias is a deviation from the centroid classifier too: penalized, so C → 0 leaves none
        loss = -c * float((log_p * onehot).sum()) + 0.5 * float((v * v).sum() + (b * b).sum())
        return loss, np.concatenate([(residual.T @ z + v).ravel(), residual.sum(0) + b])

    v_size = shape[0] * shape[1]
    params = np.zeros(v_size + num_classes)
    heads = []
    for c in cs:
        params = minimize(objective, params, args=(c,), jac=True, method="L-BFGS-B", options={"maxiter": 2000}).x
        v, b = params[:v_size].reshape(shape), params[v_size:]
        weight = tau * means + v @ basis
        heads.append(LinearHead(torch.from_numpy(weight), torch.from_numpy(b.copy())))
    return heads


def anchor_scale(x: np.ndarray, y: np.ndarray, num_classes: int) -> float:
    """The centroid classifier's logit scale τ: maximum likelihood of ``softmax(τ · x·M̂ᵀ)`` on the samples,
    each scored against its own class's mean *without itself* (leave-one-out).

    With itself in the mean every sample looks easy, τ runs to its bound, and the anchored head's
    deviation could not move it off the centroid at any C. Samples alone in their class are left out;
    if that is all of them (one sample per class), τ = :data:`ANCHOR_DEFAULT_SCALE`.
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    onehot = np.eye(num_classes)[y]
    sums = onehot.T @ x  # (K, D) class sums
    dots = x @ sums.T  # x_i · S_k
    own = (x * x).sum(1, keepdims=True)
    # x_i · (S_k - [k = y_i] x_i) / ‖S_k - [k = y_i] x_i‖
    loo_dots = dots - onehot * own
    loo_norms = np.sqrt(np.maximum((sums * sums).sum(1)[None, :] - onehot * (2 * dots - own), 1e-24))
    cosines = loo_dots / loo_norms
    usable = onehot.sum(0)[y] > 1
    if not usable.any():
        return ANCHOR_DEFAULT_SCALE

    def loss(tau: float) -> float:
        return -float((log_softmax(tau * cosines[usable], axis=1) * onehot[usable]).sum())

    return float(minimize_scalar(loss, bounds=(0.0, ANCHOR_MAX_SCALE), method="bounded").x)


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
    anchored: bool = True,
) -> tuple[LinearHead, dict[str, float | str], float]:
    """The head with the best validation accuracy over every (training samples, anchored to the centroid /
    plain / standardized, C), its choice and accuracy.

    ``samples`` maps a name (e.g. ``"plain"``, ``"views"``) to ``(features, labels)``; ties go to the
    earlier samples, then the anchored head (``anchored=True``), then unit-norm features, then the smaller
    C. Each (samples, variant) pair is one regularization path over ``cs`` (:func:`fit_anchored_path`,
    :func:`fit_linear_path`).
    """
    best: tuple[float, dict[str, float | str], LinearHead] | None = None
    for name, (features, labels) in samples.items():
        variants = [("+anchored", None)] if anchored else []
        variants += [("+standardized" if scaled else "", scaled) for scaled in standardize]
        for suffix, scaled in variants:
            if scaled is None:
                path = fit_anchored_path(features, labels, num_classes, cs=sorted(cs))
            else:
                path = fit_linear_path(features, labels, num_classes, cs=sorted(cs), standardize=scaled)
            for c, head in zip(sorted(cs), path):
                acc = float((head.logits(val_features).argmax(-1) == val_labels).float().mean())
                if best is None or acc > best[0]:
                    best = (acc, {"samples": name + suffix, "C": c}, head)
    assert best is not None, "samples, standardize and cs must not be empty"
    return best[2], best[1], best[0]
