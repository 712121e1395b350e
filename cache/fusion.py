"""CaFo's adaptive ensemble of cache branches.

Each branch's logits are standardized per sample (zero mean, unit std over
classes); a branch's weight is its agreement (dot product) with the
standardized reference logits (CLIP's zero-shot prior in CaFo), softmaxed over
branches; the fused logits are the weighted sum of standardized branch logits.
This is ``logits_fuse(..., normalize="mean")`` of the CaFo code, per sample.

>>> import torch
>>> ref = torch.tensor([[2.0, 0.0, -2.0]])
>>> agree, disagree = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[-1.0, 0.0, 1.0]])
>>> adaptive_weights(ref, [agree, disagree])[0].round(decimals=3).tolist()
[0.982, 0.018]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def standardize(logits: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``(x - mean) / std`` over the class dimension (unbiased std, as ``torch.std`` in CaFo)."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + eps)


def adaptive_weights(reference: torch.Tensor, branches: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(B, n)`` softmax over branches of ⟨standardize(branch), standardize(reference)⟩."""
    ref = standardize(reference)
    agreement = torch.stack([(standardize(b) * ref).sum(-1) for b in branches], dim=-1)
    return agreement.softmax(dim=-1)


def adaptive_fuse(reference: torch.Tensor, branches: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused ``(B, C)`` logits and the ``(B, n)`` branch weights."""
    weights = adaptive_weights(reference, branches)
    stacked = torch.stack([standardize(b) for b in branches], dim=1)  # (B, n, C)
    return (weights.unsqueeze(-1) * stacked).sum(1), weights
