"""The few-shot cache model (Tip-Adapter / CaFo family), arrays in, arrays out.

For each expert branch ``i`` the cache holds **keys** ``K_i`` (L2-normalized
support features, ``N × D_i``) and shares the **values** ``L`` (one-hot labels,
``N × C``). For query features ``f_i``:

* affinity ``A_i = exp(-β (1 - f_i K_iᵀ))`` and cache logits ``A_i L`` (Tip-Adapter);
* a prior ``P = 100 · mean_j f_j · W_j`` over the branches that have prior weights:
  CLIP's zero-shot text classifier (CaFo), or, without CLIP, each branch's
  normalized class prototypes (mean support feature per class) — a "visual
  zero-shot" prior, so the cache refines a nearest-prototype classifier;
* fusion ``"adaptive"`` (CaFo): ``P + α Σ_i w_i · standardize(A_i L)`` with ``w`` the
  softmaxed agreement of each branch with ``P`` (see :mod:`cache.fusion`);
  fusion ``"sum"`` (Tip-Adapter): ``P + α Σ_i A_i L``.

Without any prior, the reference for the adaptive weights is the mean of the
standardized branches and the prior term is zero.

Keys are an ``nn.Parameter`` per branch, so the same module trains them
(Tip-Adapter-F / CaFo training, :mod:`cache.training`).

>>> import torch
>>> keys = {"dino": torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)}
>>> cache = AdaptiveCache(keys, torch.tensor([0, 0, 1, 1]), num_classes=2)
>>> cache({"dino": keys["dino"][:1]}).logits.argmax().item()
0
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from cache.fusion import adaptive_weights, standardize
from errors import ConfigError

#: CLIP's logit scale, used by CaFo and Tip-Adapter for the zero-shot prior.
PRIOR_SCALE = 100.0
FUSIONS = ("adaptive", "sum")


def affinity(query: torch.Tensor, keys: torch.Tensor, beta: float) -> torch.Tensor:
    """``exp(-β (1 - q·kᵀ))``: ``(B, D) × (N, D) → (B, N)``; 1 for identical unit vectors."""
    # In place on the fresh (B, N) product: three fewer temporaries of the largest tensor in predict.
    return (query @ keys.T).sub_(1.0).mul_(beta).exp_()


def label_sum(affinities: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``A · onehot(labels)`` without the one-hot matrix: each class sums its keys' affinities."""
    return affinities.new_zeros(affinities.shape[0], num_classes).index_add_(1, labels, affinities)


@dataclass(frozen=True)
class CacheOutput:
    """Final logits and what each part contributed (all ``(B, C)`` except ``weights``: ``(B, n)``)."""

    logits: torch.Tensor
    prior: torch.Tensor | None
    branches: dict[str, torch.Tensor]  # α · w_i · branch_i: each branch's additive share of the logits
    weights: torch.Tensor  # fusion weight per branch


class AdaptiveCache(nn.Module):
    """Feature caches of N experts fused with an optional zero-shot prior.

    ``keys``: branch name → ``(N, D)`` support features (same N, same order for every branch).
    ``prior_weights``: branch name → ``(D, C)`` classifier on that branch's features (CLIP's text
    weights, or class prototypes); the prior is ``100 ×`` their mean cosine logits.
    """

    def __init__(
        self,
        keys: Mapping[str, torch.Tensor],
        labels: torch.Tensor,
        num_classes: int,
        *,
        prior_weights: Mapping[str, torch.Tensor] | None = None,
        alpha: float = 1.0,
        beta: float = 5.5,
        fusion: str = "adaptive",
    ) -> None:
        super().__init__()
        if not keys:
            raise ConfigError("the cache needs at least one branch of keys")
        sizes = {name: k.shape[0] for name, k in keys.items()}
        if len(set(sizes.values())) != 1 or labels.shape[0] != next(iter(sizes.values())):
            raise ConfigError(f"every branch needs one key per support label ({labels.shape[0]}); got {sizes}")
        if fusion not in FUSIONS:
            raise ConfigError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        unknown = set(prior_weights or {}) - set(keys)
        if unknown:
            raise ConfigError(f"prior weights for unknown branches {sorted(unknown)} (branches: {sorted(keys)})")
        self.names = list(keys)
        self.keys_ = nn.ParameterDict(
            {name: nn.Parameter(nn.functional.normalize(k.float(), dim=-1).clone()) for name, k in keys.items()}
        )
        self.register_buffer("labels", labels.long().clone())
        self.prior_names = list(prior_weights or {})
        for name, w in (prior_weights or {}).items():
            if w.shape != (keys[name].shape[1], num_classes):
                raise ConfigError(f"prior weights of {name!r} must be (D, C) = {(keys[name].shape[1], num_classes)}")
            # Row-major copy: a transposed view (prototypes.T) multiplies through another BLAS path and
            # rounds differently, so a saved-and-loaded cache would not reproduce its own logits bit for bit.
            self.register_buffer(f"prior_{name}", w.float().clone(memory_format=torch.contiguous_format))
        self.num_classes = num_classes
        self.alpha, self.beta, self.fusion = float(alpha), float(beta), fusion

    def prior_weights(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, f"prior_{n}") for n in self.prior_names}

    def prior(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """``100 · mean_j f_j W_j`` over the prior branches (features already normalized), or None."""
        if not self.prior_names:
            return None
        return PRIOR_SCALE * torch.stack([features[n] @ w for n, w in self.prior_weights().items()]).mean(0)

    def branch_logits(self, features: Mapping[str, torch.Tensor], beta: float | None = None) -> dict[str, torch.Tensor]:
        """Raw cache logits ``A_i L`` per branch."""
        beta = self.beta if beta is None else beta
        missing = [n for n in self.names if n not in features]
        if missing:
            raise KeyError(f"features missing for branches {missing}")
        return {
            n: label_sum(affinity(features[n], self.keys_[n], beta), self.labels, self.num_classes) for n in self.names
        }

    def combine(
        self,
        prior: torch.Tensor | None,
        branches: Mapping[str, torch.Tensor],
        alpha: float | None = None,
        fusion: str | None = None,
    ) -> CacheOutput:
        """Fuse precomputed branch logits with the prior (used directly by the α/β search)."""
        alpha = self.alpha if alpha is None else alpha
        if (fusion or self.fusion) == "sum":
            first = next(iter(branches.values()))
            weights = torch.ones(first.shape[0], len(branches), device=first.device)
            shares = {n: alpha * b for n, b in branches.items()}
        else:
            standardized = {n: standardize(b) for n, b in branches.items()}
            # Without a prior, the branches' consensus is the reference they are weighed against.
            reference = prior if prior is not None else torch.stack(list(standardized.values())).mean(0)
            weights = adaptive_weights(reference, list(branches.values()))
            shares = {n: alpha * weights[:, i : i + 1] * z for i, (n, z) in enumerate(standardized.items())}
        total = sum(shares.values())
        return CacheOutput(total if prior is None else prior + total, prior, shares, weights)

    def forward(
        self,
        features: Mapping[str, torch.Tensor],
        *,
        alpha: float | None = None,
        beta: float | None = None,
        fusion: str | None = None,
    ) -> CacheOutput:
        feats = {n: nn.functional.normalize(f.float(), dim=-1) for n, f in features.items()}
        return self.combine(self.prior(feats), self.branch_logits(feats, beta), alpha, fusion)
