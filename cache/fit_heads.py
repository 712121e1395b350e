"""Fitting one method's head of a :class:`~cache.head.FewShotHead`, its hyper-parameters chosen on validation.

One function, :func:`fit_head`, so the head class keeps the choosing (``auto``) and this module the
per-method recipes: the cache's α/β grid, key training, GDA and its α, the linear probe's C, samples
and standardization.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from cache.gda import fit_gda
from cache.linear import LINEAR_CS, fit_linear, search_linear
from cache.search import GDA_ALPHAS, search_alpha_beta, search_gda_alpha
from cache.training import train_keys

if TYPE_CHECKING:
    from cache.head import FewShotHead

#: support images per class from which the linear head may standardize features (a per-dimension scale
#: from fewer is noise: measured on DTD-10 and ants/bees, standardizing cost 2-20 points at 1-4 shots)
STANDARDIZE_MIN_SHOTS = 8


def normalized(feats: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each branch's features, L2-normalized (what the prior and the cache compare)."""
    return {n: torch.nn.functional.normalize(f.float(), dim=-1) for n, f in feats.items()}


def fit_head(
    head: FewShotHead,
    method: str,
    views: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    val_feats: Mapping[str, torch.Tensor] | None,
    val_labels: torch.Tensor | None,
) -> float:
    """Fit ``method``'s part of ``head`` (its cache already built), choosing its hyper-parameters on
    validation if given; returns its validation accuracy (NaN without validation).

    Under ``auto`` each candidate's search summary goes to ``head.report["search.<method>"]``.
    """
    where = "search" if head.method != "auto" else f"search.{method}"
    has_val = val_feats is not None and val_labels is not None
    # every view of every support image is one sample for the heads fitted on samples (gda, linear)
    samples = head.concat({n: v.reshape(-1, v.shape[-1]) for n, v in views.items()})
    sample_labels = labels.repeat(next(iter(views.values())).shape[0])
    val_acc = float("nan")
    if method == "cache-train":
        result = train_keys(
            head.cache,
            dict(views),
            labels,
            val_feats,
            val_labels,
            epochs=head.epochs,
            lr=head.lr,
            seed=head.seed,
            with_prior=head.prior == "text",
        )
        head.report["training"] = {"best_epoch": result.best_epoch, "history": result.history}
    if method in ("cache", "cache-train") and has_val:
        head.search = search_alpha_beta(head.cache, val_feats, val_labels)
        head.cache.alpha, head.cache.beta = head.search.alpha, head.search.beta
        head.report[where] = head.search.summary()
        val_acc = head.search.val_accuracy
    if method == "gda":
        head.gda = fit_gda(samples, sample_labels, len(head.classnames))
        if has_val:
            prior = head.cache.prior(normalized(val_feats))
            head.gda_alpha, val_acc = search_gda_alpha(head.gda, head.concat(val_feats), prior, val_labels)
            head.report[where] = {
                "gda_alpha": head.gda_alpha,
                "val_accuracy": val_acc,
                "gda_alphas": {"min": min(GDA_ALPHAS), "max": max(GDA_ALPHAS), "points": len(GDA_ALPHAS)},
                "searched": prior is not None,  # without a prior every α gives the same predictions
            }
    if method == "linear":
        num = len(head.classnames)
        if has_val:
            # the plain images or every view as samples: validation decides (views helped on none of our sets)
            candidates = {"plain": (head.concat({n: v[0] for n, v in views.items()}), labels)}
            if next(iter(views.values())).shape[0] > 1:
                candidates["views"] = (samples, sample_labels)
            shots = int(torch.bincount(labels, minlength=num).min())
            standardize = (False, True) if shots >= STANDARDIZE_MIN_SHOTS else (False,)
            head.linear, choice, val_acc = search_linear(
                candidates, num, head.concat(val_feats), val_labels, standardize=standardize
            )
            head.linear_c, head.linear_samples = float(choice["C"]), str(choice["samples"])
            head.report[where] = {
                "linear_c": head.linear_c,
                "linear_samples": head.linear_samples,
                "standardize_searched": list(standardize),
                "val_accuracy": val_acc,
                "cs": {"min": min(LINEAR_CS), "max": max(LINEAR_CS), "points": len(LINEAR_CS)},
            }
        else:
            head.linear = fit_linear(samples, sample_labels, num)
    return val_acc
