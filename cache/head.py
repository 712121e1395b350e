"""The few-shot model as one head: support features in, class logits out (no expert, no image).

:class:`FewShotHead` fits one of :data:`METHODS` on support features per branch (an expert's name),
``(V, N, D)`` with view 0 the plain image, choosing hyper-parameters on validation features when given:
``"cache"`` (training-free CaFo/Tip-Adapter cache, α/β searched), ``"cache-train"`` (learnable keys),
``"gda"`` (closed-form Gaussian head), ``"linear"`` (logistic regression on the concatenated features),
``"zero-shot"`` (the prior alone), ``"auto"`` (see :func:`choose_head` and :meth:`FewShotHead.fit`).
The prior is the caller's class text weights (``prior="text"``: CLIP's zero-shot classifier), each
branch's class prototypes (``"prototype"``) or nothing (``"none"``). Saving is two plain parts, tensors
and a JSON-safe config (:meth:`~FewShotHead.state` / :meth:`~FewShotHead.from_state`); the caller
writes them (``workflows.fewshot``: safetensors and ``config.json``, no pickle).

>>> import torch
>>> x = torch.nn.functional.normalize(torch.eye(2).repeat(2, 1) + 0.1 * torch.rand(4, 2), dim=-1)
>>> head = FewShotHead("gda").fit({"dino": x[None]}, torch.tensor([0, 1, 0, 1]), classnames=["ant", "bee"])
>>> head.logits({"dino": torch.tensor([[1.0, 0.0]])})[0].argmax().item()
0
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cache.adapter import AdaptiveCache
from cache.auto import AUTO_CANDIDATES, AUTO_MIN_VALIDATION, EXHAUSTIVE_SUBSETS, branch_subsets, choose_head
from cache.fit_heads import fit_head, normalized
from cache.gda import GDAHead
from cache.linear import LinearHead
from cache.search import ONE_SE, SearchResult, choose_within_noise, paired_standard_error
from errors import ConfigError

# auto's rules live in cache.auto; re-exported here, where they were first imported from.
__all__ = [
    "AUTO_CANDIDATES",
    "AUTO_MIN_VALIDATION",
    "EXHAUSTIVE_SUBSETS",
    "METHODS",
    "PRIORS",
    "FewShotHead",
    "branch_subsets",
    "choose_head",
    "prototypes",
]

log = logging.getLogger(__name__)

METHODS = ("auto", "cache", "cache-train", "gda", "linear", "zero-shot")
PRIORS = ("text", "prototype", "none")
#: what :meth:`FewShotHead.from_state` copies from a fitted head (and ``auto`` from its chosen subset)
_FITTED = ("branches", "fusion", "cache", "gda", "gda_alpha", "linear", "linear_c", "linear_samples")


def prototypes(plain: Mapping[str, torch.Tensor], labels: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """Each branch's normalized class means of its normalized features, ``(D, C)``: the visual prior."""
    return {
        n: torch.nn.functional.normalize(
            torch.stack(
                [torch.nn.functional.normalize(k.float(), dim=-1)[labels == c].mean(0) for c in range(num_classes)]
            ),
            dim=-1,
        ).T
        for n, k in plain.items()
    }


class FewShotHead:
    """One few-shot classifier head over feature branches (see the module docstring).

    ``fusion``: ``"adaptive"`` (CaFo), ``"sum"`` (Tip-Adapter) or ``"auto"`` (adaptive for two or more
    branches). ``keep``: branches ``auto`` never leaves out when it chooses which to fuse (CLIP's, whose
    text prior is kept whenever given); ``select_branches=False`` fuses every branch it is given.
    """

    def __init__(
        self,
        method: str = "cache",
        *,
        fusion: str = "auto",
        prior: str = "prototype",
        keep: Sequence[str] = (),
        epochs: int = 20,
        lr: float = 1e-3,
        seed: int = 0,
        select_branches: bool = True,
    ) -> None:
        if method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
        if prior not in PRIORS:
            raise ConfigError(f"prior must be one of {PRIORS}, got {prior!r}")
        if method == "zero-shot" and prior != "text":
            raise ConfigError("method 'zero-shot' needs the text prior (class text weights)")
        self.method, self.fusion_arg, self.prior = method, fusion, prior
        self.keep, self.select_branches = tuple(keep), select_branches
        self.epochs, self.lr, self.seed = epochs, lr, seed
        self.classnames: tuple[str, ...] = ()
        self.branches: list[str] = []
        self.fusion = fusion
        self.cache: AdaptiveCache | None = None
        self.gda: GDAHead | None = None
        self.gda_alpha = 1.0
        self.linear: LinearHead | None = None
        self.linear_c = 1.0
        self.linear_samples = "views"
        #: the head that makes predictions: ``method``, or for ``"auto"`` the one chosen on validation
        self.active = method if method != "auto" else "cache"
        self.report: dict[str, Any] = {}
        #: the whole α/β validation grid of the last fit (``report["search"]`` only summarizes it)
        self.search: SearchResult | None = None
        self._candidate_searches: dict[str, dict] | None = None  # auto's per-candidate search summaries

    # ------------------------------------------------------------------ fit

    def fit(
        self,
        views: Mapping[str, torch.Tensor],
        labels: torch.Tensor,
        val_feats: Mapping[str, torch.Tensor] | None = None,
        val_labels: torch.Tensor | None = None,
        *,
        classnames: Sequence[str],
        text_weights: Mapping[str, torch.Tensor] | None = None,
    ) -> FewShotHead:
        """Fit on ``views[branch]`` ``(V, N, D)`` (keys: the mean over views, as Tip-Adapter; the prior and
        the plain samples: view 0) with integer ``labels``; ``val_feats[branch]`` ``(M, D)`` chooses the
        hyper-parameters (without it the defaults are kept). ``text_weights``: branch → ``(D, C)`` class
        text weights, the prior when ``prior="text"``.

        ``auto`` with validation fits every candidate with its own validation search and keeps
        :func:`choose_head`'s (the training-free cache under :data:`AUTO_MIN_VALIDATION` images); with
        several branches it also chooses which to fuse (:meth:`_fit_branch_subsets`).
        """
        if self.prior == "text" and not text_weights:
            raise ConfigError("prior='text' needs the class text weights (text_weights={branch: (D, C)})")
        self.classnames = tuple(classnames)
        self.search = None
        self._candidate_searches = None
        self.branches = list(views)
        has_val = val_feats is not None and val_labels is not None and len(val_labels) > 0
        if self.method == "auto" and self.select_branches and has_val and len(self._selectable()) > 1:
            return self._fit_branch_subsets(views, labels, val_feats, val_labels, text_weights)
        self.fusion = self.fusion_arg if self.fusion_arg != "auto" else ("adaptive" if len(views) > 1 else "sum")
        missing = set(range(len(self.classnames))) - set(labels.tolist())
        if missing:
            raise ConfigError(f"no usable support image for classes {[self.classnames[i] for i in sorted(missing)]}")
        keys = {n: v.mean(0) for n, v in views.items()}
        self.cache = AdaptiveCache(
            keys,
            labels,
            len(self.classnames),
            prior_weights=self._prior(views, labels, text_weights),
            fusion=self.fusion,
        )
        self.report = {"method": self.method}
        if not has_val:
            val_feats = val_labels = None
        if self.method != "auto":
            self.active = self.method
            fit_head(self, self.method, views, labels, val_feats, val_labels)
        elif not has_val:
            log.warning("method 'auto' without a validation split: using the training-free cache")
            self.active = "cache"
        else:
            self._choose(views, labels, val_feats, val_labels)
        self.report["params"] = self.chosen_params()
        return self

    def _prior(self, views, labels, text_weights) -> dict[str, torch.Tensor]:
        if self.prior == "none":
            return {}
        if self.prior == "prototype":
            return prototypes({n: v[0] for n, v in views.items()}, labels, len(self.classnames))
        return dict(text_weights or {})

    def _choose(self, views, labels, val_feats, val_labels) -> None:
        """``auto``: every candidate fitted with its validation search, then the rule picks one."""
        scores = {m: fit_head(self, m, views, labels, val_feats, val_labels) for m in AUTO_CANDIDATES}
        correct = {}
        for m in AUTO_CANDIDATES:
            self.active = m
            correct[m] = self.logits(val_feats)[0].argmax(-1) == val_labels
        few = len(val_labels) < AUTO_MIN_VALIDATION
        self.active = "cache" if few else choose_head(correct)
        best = max(AUTO_CANDIDATES, key=lambda m: scores[m])
        self.report["auto"] = {
            "chosen": self.active,
            "val_accuracy": scores,
            "best_on_val": best,
            "standard_error": {m: paired_standard_error(correct[best], correct[m]) for m in AUTO_CANDIDATES},
            "rule": f"{len(val_labels)} validation images (< {AUTO_MIN_VALIDATION}): the training-free cache"
            if few
            else f"the first of {', '.join(AUTO_CANDIDATES)} within {ONE_SE:g} paired standard error of the best",
        }
        self._candidate_searches = {m: self.report.pop(f"search.{m}") for m in AUTO_CANDIDATES}
        self.report["search"] = {**self._candidate_searches[self.active], "val_accuracy": scores[self.active]}

    def _selectable(self) -> list[str]:
        """The branches ``auto`` may leave out: all but :attr:`keep`."""
        return [n for n in self.branches if n not in self.keep]

    def _fit_branch_subsets(self, views, labels, val_feats, val_labels, text_weights) -> FewShotHead:
        """``auto`` over subsets of the branches: the subset (and head) with the best validation accuracy.

        Fusing every expert is what CaFo does, but its adaptive weights cannot save the fusion from a
        weak expert when the prior averages every branch: on DTD-10 at 1 shot, EfficientNet-Lite0 alone
        reaches 54 % and fused with a colour histogram (11 %) 27 % (cache, gda) to 49 % (linear). So
        ``auto`` fits itself on each subset (:func:`branch_subsets`, largest first) and keeps the first
        within one paired standard error of the best on validation (the one-SE rule, as for its heads):
        fewer branches only when they win beyond noise. ``report["experts"]`` has every subset's
        validation accuracy; :attr:`branches` are the chosen ones from then on.
        """
        kept = [n for n in self.branches if n in self.keep]
        fitted: list[FewShotHead] = []
        correct: list[torch.Tensor] = []
        scores: dict[str, float] = {}
        for subset in branch_subsets(self._selectable()):
            names = [*subset, *kept]
            sub = FewShotHead(
                "auto",
                fusion=self.fusion_arg,
                prior=self.prior,
                keep=self.keep,
                epochs=self.epochs,
                lr=self.lr,
                seed=self.seed,
                select_branches=False,
            )
            sub.fit(
                {n: views[n] for n in names},
                labels,
                {n: val_feats[n] for n in names},
                val_labels,
                classnames=self.classnames,
                text_weights=text_weights,
            )
            scores["+".join(subset)] = float(sub.report["auto"]["val_accuracy"][sub.active])
            fitted.append(sub)
            correct.append(sub.logits({n: val_feats[n] for n in names})[0].argmax(-1) == val_labels)
        # subsets come largest first, every branch the reference: a smaller subset must beat every
        # larger one by more than one paired standard error (the one-SE rule, as for the heads)
        chosen = fitted[choose_within_noise(correct)]
        for attr in (*_FITTED, "_candidate_searches", "active", "search", "report"):
            setattr(self, attr, getattr(chosen, attr))
        self.report["experts"] = {"chosen": self._selectable(), "val_accuracy": scores}
        self.report["params"] = self.chosen_params()
        return self

    def chosen_params(self) -> dict[str, float | int | str]:
        """The hyper-parameters this head actually uses, as fitted (α/β of the cache are unused by ``gda``)."""
        if self.cache is None or self.active == "zero-shot":
            return {}
        chosen: dict[str, str] = {"head": self.active} if self.method == "auto" else {}
        if "experts" in self.report:  # auto's choice of branches to fuse
            chosen["experts"] = "+".join(self.report["experts"]["chosen"])
        if self.active == "gda":
            return {**chosen, "gda_alpha": self.gda_alpha}
        if self.active == "linear":
            return {**chosen, "C": self.linear_c, "samples": self.linear_samples}
        params: dict[str, float | int | str] = {**chosen, "alpha": self.cache.alpha, "beta": self.cache.beta}
        if "training" in self.report:
            params["best_epoch"] = self.report["training"]["best_epoch"]
        return params

    def as_method(self, method: str) -> FewShotHead:
        """This ``auto`` head, fitted with validation, as the candidate ``method`` alone (a copy).

        ``auto`` fits every candidate with its own validation search, exactly as fitting that method
        alone would, so a sweep scores the candidates from auto's fit instead of fitting each twice.
        """
        if self.method != "auto" or self._candidate_searches is None or method not in self._candidate_searches:
            raise ConfigError(
                f"as_method needs an 'auto' classifier fitted with validation and one of {AUTO_CANDIDATES}"
            )
        clone = copy.copy(self)
        clone.method = clone.active = method
        clone.report = {"method": method, "search": self._candidate_searches[method]}
        clone.report["params"] = clone.chosen_params()
        return clone

    # ------------------------------------------------------------------ predict

    def concat(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The normalized features of every branch, concatenated in :attr:`branches` order (gda, linear)."""
        return torch.cat([torch.nn.functional.normalize(feats[n].float(), dim=-1) for n in self.branches], dim=-1)

    @torch.no_grad()
    def logits(self, feats: Mapping[str, torch.Tensor]):
        """Final logits ``(B, C)`` for ``(B, D)`` features of every branch, the parts (name → ``(B, C)``:
        prior, branch shares, gda or linear) and the cache's fusion weights per branch (or None)."""
        if self.cache is None:
            raise ConfigError("fit() or load() the classifier first")
        self.cache.eval()
        if self.active == "zero-shot":
            prior = self.cache.prior(normalized(feats))
            return prior, {"prior": prior}, None
        if self.active == "linear":
            logits = self.linear.logits(self.concat(feats))
            return logits, {"linear": logits}, None
        if self.active == "gda":
            prior = self.cache.prior(normalized(feats))
            gda = self.gda_alpha * self.gda.logits(self.concat(feats))
            parts = {"gda": gda} if prior is None else {"prior": prior, "gda": gda}
            return gda if prior is None else prior + gda, parts, None
        out = self.cache(feats)
        parts = dict(out.branches)
        if out.prior is not None:
            parts = {"prior": out.prior, **parts}
        return out.logits, parts, out.weights

    # ------------------------------------------------------------------ persistence

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The fitted head as tensors (keys, labels, prior, GDA and linear weights) and a JSON-safe config
        (its settings and choices, and ``report``)."""
        if self.cache is None:
            raise ConfigError("nothing to save: fit() the classifier first")
        tensors = {f"keys.{n}": self.cache.keys_[n].detach().contiguous() for n in self.cache.names}
        tensors["labels"] = self.cache.labels
        for n, w in self.cache.prior_weights().items():
            tensors[f"prior.{n}"] = w.contiguous()
        if self.gda is not None:
            tensors["gda.weight"], tensors["gda.bias"] = self.gda.weight.contiguous(), self.gda.bias.contiguous()
        if self.linear is not None:
            tensors["linear.weight"], tensors["linear.bias"] = self.linear.weight, self.linear.bias
        config = {
            "fusion": self.fusion,
            "prior": self.prior,
            "alpha": self.cache.alpha,
            "beta": self.cache.beta,
            "gda_alpha": self.gda_alpha,
            "head": self.active,
            "linear_c": self.linear_c,
            "linear_samples": self.linear_samples,
            "report": self.report,
        }
        return tensors, config

    @classmethod
    def from_state(
        cls,
        tensors: Mapping[str, torch.Tensor],
        config: Mapping[str, Any],
        *,
        method: str,
        branches: Sequence[str],
        classnames: Sequence[str],
        keep: Sequence[str] = (),
    ) -> FewShotHead:
        """The head :meth:`state` gave, for ``branches`` in that order; a bad config is a :class:`ConfigError`."""
        try:
            head = cls(method, fusion=config["fusion"], prior=config["prior"], keep=keep)
            head.classnames, head.branches, head.fusion = tuple(classnames), list(branches), config["fusion"]
            head.cache = AdaptiveCache(
                {n: tensors[f"keys.{n}"] for n in branches},
                tensors["labels"],
                len(head.classnames),
                prior_weights={n: tensors[f"prior.{n}"] for n in branches if f"prior.{n}" in tensors},
                alpha=config["alpha"],
                beta=config["beta"],
                fusion=config["fusion"],
            )
        except KeyError as err:
            raise ConfigError(f"saved head: missing {err}") from err
        with torch.no_grad():  # trained keys are stored as-is (the constructor would renormalize them)
            for n in branches:
                head.cache.keys_[n].copy_(tensors[f"keys.{n}"])
        if "gda.weight" in tensors:
            head.gda = GDAHead(tensors["gda.weight"], tensors["gda.bias"])
        head.gda_alpha = config["gda_alpha"]
        if "linear.weight" in tensors:
            head.linear = LinearHead(tensors["linear.weight"], tensors["linear.bias"])
        head.linear_c = config.get("linear_c", 1.0)
        head.linear_samples = str(config.get("linear_samples", "views"))
        active = config.get("head", method)
        if active not in METHODS or active == "auto":
            raise ConfigError(f"'head' must be one of {[m for m in METHODS if m != 'auto']}, got {active!r}")
        head.active, head.report = active, dict(config.get("report", {}))
        return head
