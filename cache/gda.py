"""Gaussian discriminant analysis head (GDA, Wang et al., ICLR 2024).

Class means plus one shared covariance, estimated with the shrinkage used by
the GDA code: ``Σ⁻¹ ≈ D · pinv((N - 1)·S + tr(S)·I)`` where ``S`` is the
covariance of class-centred features. Logits are ``f·Wᵀ + b`` with
``W = μ Σ⁻¹`` and ``b = log p - ½ μ Σ⁻¹ μᵀ`` (uniform class priors).

>>> import torch
>>> x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
>>> head = fit_gda(x, torch.tensor([0, 0, 1, 1]), 2)
>>> head.logits(torch.tensor([[1.0, 0.0]])).argmax().item()
0
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from errors import ConfigError


@dataclass(frozen=True)
class GDAHead:
    weight: torch.Tensor  # (C, D)
    bias: torch.Tensor  # (C,)

    def __post_init__(self) -> None:
        # One memory layout whatever made the tensors (fit, safetensors load): same BLAS path, same bits.
        object.__setattr__(self, "weight", self.weight.float().clone(memory_format=torch.contiguous_format))
        object.__setattr__(self, "bias", self.bias.float().clone(memory_format=torch.contiguous_format))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.weight.T + self.bias


def fit_gda(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> GDAHead:
    """Closed-form GDA on ``(N, D)`` features with integer ``labels``; every class needs ≥ 1 sample."""
    x = features.double()
    dim = x.shape[1]
    counts = torch.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        raise ConfigError(
            f"GDA needs at least one sample per class; empty classes: {torch.where(counts == 0)[0].tolist()}"
        )
    means = torch.stack([x[labels == c].mean(0) for c in range(num_classes)])  # (C, D)
    centred = x - means[labels]  # C_: class-centred rows, so their overall mean is 0 and (N - 1)·S = C_ᵀC_
    n = centred.shape[0]
    trace = float((centred * centred).sum()) / (n - 1) if n > 1 else 0.0  # tr(S)
    shrink = trace if trace > 0 else 1.0
    # W = D · μ (C_ᵀC_ + t·I)⁻¹ (the matrix is positive definite, so its pinv is its inverse). Few-shot
    # means N ≪ D: by Woodbury, (C_ᵀC_ + tI)⁻¹ = (I - C_ᵀ(C_C_ᵀ + tI)⁻¹C_) / t, an N×N solve instead of
    # a D×D pseudo-inverse (1280-d features: milliseconds instead of seconds).
    if n < dim:
        inner = torch.linalg.solve(centred @ centred.T + shrink * torch.eye(n, dtype=x.dtype), centred @ means.T)
        weight = dim / shrink * (means - (centred.T @ inner).T)  # (C, D)
    else:
        shrunk = centred.T @ centred + shrink * torch.eye(dim, dtype=x.dtype)
        weight = dim * torch.linalg.solve(shrunk, means.T).T  # shrunk is symmetric
    log_prior = torch.full((num_classes,), 1.0 / num_classes, dtype=x.dtype).log()
    bias = log_prior - 0.5 * (weight * means).sum(-1)
    return GDAHead(weight.float(), bias.float())
