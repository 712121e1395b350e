"""Learnable cache keys (Tip-Adapter-F / CaFo training).

The cache keys start as the support features and are trained with AdamW and a
cosine schedule to classify augmented views of the support images. The loss is
Tip-Adapter-F's cross-entropy on ``prior + α Σ_i A_i L`` (the "sum" fusion):
CaFo's standardized fusion has no gradient for two classes (a standardized
2-vector is always ±1/√2), so keys learn on raw affinities and the configured
fusion is used for validation and inference. The validation split picks the
best epoch; its keys are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from cache.adapter import AdaptiveCache
from cache.search import accuracy
from errors import ConfigError


@dataclass(frozen=True)
class TrainResult:
    best_epoch: int
    best_val_accuracy: float
    history: list[dict]


def train_keys(
    cache: AdaptiveCache,
    views: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    val_features: Mapping[str, torch.Tensor] | None = None,
    val_labels: torch.Tensor | None = None,
    *,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 256,
    seed: int = 0,
    with_prior: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train ``cache``'s keys in place.

    ``views[branch]`` is ``(V, N, D)``: V augmented views of the N support images
    (epoch ``e`` uses view ``e % V``, in a seeded random order). Without a
    validation split the last epoch is kept. ``with_prior=False`` trains the cache
    term alone: use it when the prior was built from these same support images
    (class prototypes), which it would already classify perfectly — no gradient.
    """
    sizes = {n: v.shape for n, v in views.items()}
    if set(sizes) != set(cache.names) or len({s[:2] for s in sizes.values()}) != 1:
        raise ConfigError(f"views need every branch {cache.names} with the same (V, N); got {sizes}")
    num_views, n = next(iter(sizes.values()))[:2]
    if labels.shape[0] != n:
        raise ConfigError(f"{labels.shape[0]} labels for {n} support images")
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * -(-n // batch_size)
    params = list(cache.keys_.parameters())
    optim = torch.optim.AdamW(params, lr=lr, eps=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, steps)
    has_val = val_features is not None and val_labels is not None and len(val_labels) > 0
    best = (-1.0, 0, [p.detach().clone() for p in params])
    history = []
    for epoch in range(epochs):
        cache.train()
        view = epoch % num_views
        order = torch.randperm(n, generator=gen)
        total_loss, correct = 0.0, 0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            feats = {b: views[b][view, idx] for b in cache.names}
            if with_prior:
                logits = cache(feats, fusion="sum").logits
            else:
                normed = {b: torch.nn.functional.normalize(f.float(), dim=-1) for b, f in feats.items()}
                logits = cache.combine(None, cache.branch_logits(normed), fusion="sum").logits
            loss = torch.nn.functional.cross_entropy(logits, labels[idx])
            optim.zero_grad()
            loss.backward()
            optim.step()
            sched.step()
            total_loss += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(-1) == labels[idx]).sum())
        cache.eval()
        record = {"epoch": epoch + 1, "loss": total_loss / n, "train_accuracy": correct / n}
        if has_val:
            with torch.no_grad():
                record["val_accuracy"] = accuracy(cache(val_features).logits, val_labels)
            if record["val_accuracy"] > best[0]:
                best = (record["val_accuracy"], epoch + 1, [p.detach().clone() for p in params])
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    if has_val:
        with torch.no_grad():
            for p, saved in zip(params, best[2]):
                p.copy_(saved)
        return TrainResult(best[1], best[0], history)
    return TrainResult(epochs, float("nan"), history)
