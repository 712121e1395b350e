"""Few-shot classification: experts → feature store → adaptive cache → predictions.

    clf = FewShotClassifier([create_expert("timm", ...)], store=DirectoryStore("~/.cache/eb"))
    clf.fit(support, val=val)              # α/β chosen on `val`, never on the test split
    preds = clf.predict(["a.jpg", "b.jpg"])
    clf.save("model/"); FewShotClassifier.load("model/")

Methods: ``"cache"`` (training-free CaFo/Tip-Adapter cache), ``"cache-train"``
(learnable keys), ``"gda"`` (closed-form Gaussian head), ``"linear"`` (logistic
regression on the concatenated features, C chosen on validation), ``"auto"`` (linear,
unless gda or cache beats it on validation by more than one paired standard error),
``"zero-shot"`` (the prior alone); with fewer than 100 validation images ``"auto"`` keeps the cache.
The prior is CLIP's zero-shot classifier (from templates or
LLM-written class descriptions) when a ``clip`` expert is given; otherwise each
branch's class prototypes (``prior="prototype"``), so the cache refines a
nearest-prototype classifier. Fusion ``"auto"`` is CaFo's adaptive ensemble for
two or more branches and Tip-Adapter's sum for one.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from cache.adapter import AdaptiveCache
from cache.gda import GDAHead, fit_gda
from cache.linear import LINEAR_CS, LinearHead, fit_linear, search_linear
from cache.search import (
    GDA_ALPHAS,
    ONE_SE,
    SearchResult,
    accuracy,
    choose_within_noise,
    paired_standard_error,
    search_alpha_beta,
    search_gda_alpha,
)
from cache.store import FeatureStore
from cache.training import train_keys
from experts import ConfigError, Expert, ItemResult
from experts.clip import ClipExpert
from experts.file_hashes import FileHashes
from experts.images import ImageSource
from experts.stored import expert_from_stored, stored_spec
from workflows.datasets import LabelledImages
from workflows.progress import Progress
from workflows.settings import Settings
from workflows.store_runner import StoredExpert

log = logging.getLogger(__name__)

METHODS = ("auto", "cache", "cache-train", "gda", "linear", "zero-shot")
#: what ``method="auto"`` chooses among on validation, the reference first: logistic regression (the
#: linear probe every few-shot paper is measured against), then GDA, then the training-free cache. A later
#: one is chosen only if it beats the earlier ones by more than one paired standard error on validation
#: (:func:`cache.search.choose_within_noise`): within noise, auto is the linear probe.
AUTO_CANDIDATES = ("linear", "gda", "cache")
#: validation images below which ``auto`` does not choose at all and keeps the training-free cache (the
#: class centroids, refined by the support keys). Heads differ by 1-3 points; two heads that disagree on
#: 10 % of n images have a paired standard error of about sqrt(0.1 / n): 3 points at n = 100, 11 at the
#: 8 images ants/bees carves at 1-4 shots, where choosing among heads is choosing by chance.
AUTO_MIN_VALIDATION = 100
#: support images per class from which the linear head may standardize features (a per-dimension scale
#: from fewer is noise: measured on DTD-10 and ants/bees, standardizing cost 2-20 points at 1-4 shots)
STANDARDIZE_MIN_SHOTS = 8
#: up to this many experts ``auto`` tries every subset of them; beyond, all, all-but-one and each alone
EXHAUSTIVE_SUBSETS = 3
FORMAT = "expertbridge.fewshot/1"


def choose_head(correct: Mapping[str, torch.Tensor]) -> str:
    """``auto``'s choice (given at least :data:`AUTO_MIN_VALIDATION` images) from each candidate's per-image
    correctness on validation: the first of
    :data:`AUTO_CANDIDATES` within one paired standard error of the best (the one-SE rule), so a head
    other than linear must beat it by more than the validation split can resolve.

    >>> right = torch.tensor([1, 1, 1, 1, 1, 1, 1, 0]); one_more = torch.ones(8)
    >>> choose_head({"linear": right, "gda": one_more, "cache": right})   # 1 image of 8: noise
    'linear'
    """
    return AUTO_CANDIDATES[choose_within_noise([correct[m] for m in AUTO_CANDIDATES])]


@dataclass(frozen=True)
class FewShotPrediction:
    """One query's result; ``label`` is None when the image could not be used (see ``error``)."""

    source: str
    label: str | None
    probabilities: dict[str, float] = field(default_factory=dict)
    contributions: dict[str, float] = field(default_factory=dict)  # each part's logit for the predicted class
    branch_weights: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    reason: str | None = None  # why the image could not be used: the ImageError reason (truncated, missing, …)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Features:
    """Features of a list of images per branch, for the items every branch could read."""

    by_branch: dict[str, torch.Tensor]
    ok: np.ndarray  # bool per input
    errors: dict[int, str]
    reasons: dict[int, str] = field(default_factory=dict)  # input index → ImageError reason of a dropped item


def augmentation(view: int, seed: int = 0) -> Callable[[Image.Image, str], Image.Image]:
    """Tip-Adapter's support augmentation (random resized crop, scale 0.5–1, and flip), seeded per image and view.

    The same (image, view) always gives the same pixels, so augmented features can be stored and reused.
    View 0 is the image itself, so every key keeps the un-augmented feature in its average.
    """
    if view == 0:
        return lambda image, sha256: image
    crop = transforms.RandomResizedCrop(224, scale=(0.5, 1.0), interpolation=transforms.InterpolationMode.BICUBIC)
    flip = transforms.RandomHorizontalFlip(0.5)

    def apply(image: Image.Image, sha256: str) -> Image.Image:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((int(sha256[:12], 16) + 7919 * view + 104_729 * seed) % (2**63))
            return flip(crop(image))

    return apply


def view_inputs(view: int) -> dict[str, Any]:
    """``extract`` arguments for augmented view ``view`` (0 = the image itself, stored as plain features).

    Views depend only on the image and the view number, not on a run's seed, so every seed, shot
    count and method of a sweep (and every later fit) reuses the same stored views.
    """
    if view == 0:
        return {}
    return {"variant": {"aug": "rrc0.5-flip", "view": view, "seed": 0}, "transform": augmentation(view)}


class FewShotClassifier:
    """A few-shot classifier over any number of feature experts (and optionally CLIP's zero-shot prior)."""

    def __init__(
        self,
        experts: Sequence[Expert],
        *,
        clip: ClipExpert | None = None,
        method: str = "cache",
        fusion: str = "auto",
        prior: str = "auto",
        store: FeatureStore | None = None,
        templates: str | Sequence[str] = "openai",
        prompts: Mapping[str, Sequence[str]] | None = None,
        augment_views: int = 10,
        epochs: int = 20,
        lr: float = 1e-3,
        seed: int = 0,
        progress: bool = False,
        select_experts: bool = True,
    ) -> None:
        if method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
        if prior not in ("auto", "text", "prototype", "none"):
            raise ConfigError(f"prior must be auto, text, prototype or none, got {prior!r}")
        if prior == "text" and clip is None:
            raise ConfigError("prior='text' needs a clip expert")
        if method == "zero-shot" and (clip is None or prior in ("prototype", "none")):
            raise ConfigError("method 'zero-shot' needs a clip expert and its text prior")
        branches = list(experts) + ([clip] if clip is not None and clip not in experts else [])
        if not branches:
            raise ConfigError("give at least one feature expert (or a clip expert)")
        self.experts: dict[str, Expert] = {}
        for e in branches:
            name = e.name if e.name not in self.experts else f"{e.name}{len(self.experts)}"
            self.experts[name] = e
        self.clip_branch = next((n for n, e in self.experts.items() if e is clip), None)
        self.prior_kind = prior if prior != "auto" else ("text" if clip is not None else "prototype")
        self.fusion = fusion if fusion != "auto" else ("adaptive" if len(self.experts) > 1 else "sum")
        self.fusion_arg, self.prior_arg = fusion, prior
        #: every expert given; ``auto`` may narrow ``experts`` to a subset of them when it fits
        self.given_experts: dict[str, Expert] = dict(self.experts)
        self._given_fusion = self.fusion
        #: ``auto`` with validation also chooses which experts to fuse (see :meth:`_fit_expert_subsets`)
        self.select_experts = select_experts
        self.method, self.store = method, store
        self.templates, self.prompts = templates, prompts
        self.augment_views, self.epochs, self.lr, self.seed, self.progress = augment_views, epochs, lr, seed, progress
        self.classnames: tuple[str, ...] = ()
        self.cache: AdaptiveCache | None = None
        self.gda: GDAHead | None = None
        self.gda_alpha = 1.0
        self.linear: LinearHead | None = None
        self.linear_c = 1.0
        self.linear_samples = "views"
        #: the head that makes predictions: ``method``, or for ``"auto"`` the one chosen on validation
        self.head = method if method != "auto" else "cache"
        self.report: dict[str, Any] = {}
        self._candidate_searches: dict[str, dict] | None = None  # auto's per-candidate search summaries
        #: the whole α/β validation grid of the last fit (``report["search"]`` only summarizes it)
        self.search: SearchResult | None = None

    # ------------------------------------------------------------------ features

    def extract(
        self,
        sources: Sequence[ImageSource],
        *,
        variant: Mapping | None = None,
        transform=None,
        on_done: Callable[[int], None] | None = None,
        hashes: FileHashes | None = None,
    ) -> Features:
        """Features of every branch through the store; an item failing in any branch is dropped with its error.

        ``on_done(n)`` is told as items finish, once per branch (for a progress count of ``len(sources) × branches``).
        ``hashes``: file hashes shared with other calls of the same run (else shared by this call's branches),
        so each file is read once however many branches and views ask for it.
        """
        ok = np.ones(len(sources), dtype=bool)
        errors: dict[int, str] = {}
        reasons: dict[int, str] = {}
        results: dict[str, list[ItemResult]] = {}
        hashes = hashes if hashes is not None else FileHashes()
        for name, expert in self.experts.items():
            stored = StoredExpert(expert, self.store, variant=variant, transform=transform, hashes=hashes)
            results[name], _ = stored.run_counted(sources, on_done=on_done)
            for r in results[name]:
                if not r.ok:
                    ok[r.index] = False
                    errors.setdefault(r.index, f"{name}: {r.error}")
                    reasons.setdefault(r.index, r.reason or "expert_failed")
        by_branch = {
            name: torch.from_numpy(np.stack([r.evidence.vector for r, good in zip(rs, ok) if good]))
            if ok.any()
            else torch.zeros(0, 0)
            for name, rs in results.items()
        }
        return Features(by_branch, ok, errors, reasons)

    def support_views(self, sources: Sequence[str], *, on_done: Callable[[int], None] | None = None) -> Features:
        """``(V, N, D)`` per branch, ``V = augment_views``: view 0 is the image itself, the others
        :func:`augmentation` views; only items readable in every view are kept."""
        stacks: dict[str, list[torch.Tensor]] = {n: [] for n in self.experts}
        ok = np.ones(len(sources), dtype=bool)
        errors: dict[int, str] = {}
        reasons: dict[int, str] = {}
        per_view = []
        hashes = FileHashes()  # every view and branch of one fit: each support file is hashed once
        for v in range(max(1, self.augment_views)):
            f = self.extract(sources, **view_inputs(v), on_done=on_done, hashes=hashes)
            ok &= f.ok
            errors.update(f.errors)
            reasons.update(f.reasons)
            per_view.append(f)
        for f in per_view:
            keep = ok[f.ok]  # rows of this view that survive in every view
            for n in self.experts:
                stacks[n].append(f.by_branch[n][torch.from_numpy(keep)])
        return Features({n: torch.stack(s) for n, s in stacks.items()}, ok, errors, reasons)

    def _bar(self, label: str, total: int) -> Progress:
        return Progress(label, total, unit="images", enabled=self.progress, note=", ".join(self.experts))

    # ------------------------------------------------------------------ fit

    def fit(self, support: LabelledImages, val: LabelledImages | None = None) -> FewShotClassifier:
        """Build the cache from ``support``; choose hyper-parameters on ``val`` (if given)."""
        self.experts, self.fusion = dict(self.given_experts), self._given_fusion  # a refit starts from all experts
        views_total = len(support) * max(1, self.augment_views) * len(self.experts)
        with self._bar("support features", views_total) as bar:
            views = self.support_views(support.paths, on_done=bar.advance)
        if views.errors:
            log.warning("dropped %d support images: %s", len(views.errors), views.errors)
        labels = torch.tensor(support.labels)[torch.from_numpy(views.ok)]
        self.classnames = support.classnames
        val_feats, val_labels = self._val(val)
        self.fit_features(views.by_branch, labels, val_feats, val_labels, classnames=support.classnames)
        self.report = {"support": len(support), "support_dropped": views.errors, **self.report}
        return self

    def fit_features(
        self,
        views: Mapping[str, torch.Tensor],
        labels: torch.Tensor,
        val_feats: Mapping[str, torch.Tensor] | None = None,
        val_labels: torch.Tensor | None = None,
        *,
        classnames: Sequence[str],
    ) -> FewShotClassifier:
        """:meth:`fit` on features already extracted (a sweep extracts once and fits many times).

        ``views[branch]`` is ``(V, N, D)`` for the N support images (view 0 the image itself): keys are
        the mean over views (Tip-Adapter), the prior uses view 0, ``cache-train`` trains on the views.
        ``val_feats[branch]`` is ``(M, D)``; without it the default hyper-parameters are kept.
        """
        self.classnames = tuple(classnames)
        self.search = None
        self._candidate_searches = None
        if set(views) == set(self.given_experts):  # a refit on every expert's features: all may be chosen again
            self.experts, self.fusion = dict(self.given_experts), self._given_fusion
        has_val = val_feats is not None and val_labels is not None and len(val_labels) > 0
        if self.method == "auto" and self.select_experts and has_val and len(self._selectable()) > 1:
            return self._fit_expert_subsets(views, labels, val_feats, val_labels, classnames)
        keys = {n: v.mean(0) for n, v in views.items()}
        plain = {n: v[0] for n, v in views.items()}
        missing = set(range(len(self.classnames))) - set(labels.tolist())
        if missing:
            raise ConfigError(f"no usable support image for classes {[self.classnames[i] for i in sorted(missing)]}")
        self.cache = AdaptiveCache(
            keys, labels, len(self.classnames), prior_weights=self._prior_weights(plain, labels), fusion=self.fusion
        )
        self.report = {"method": self.method}
        has_val = val_feats is not None and val_labels is not None and len(val_labels) > 0
        if not has_val:
            val_feats = val_labels = None

        if self.method != "auto":
            self.head = self.method
            self._fit_head(self.method, views, labels, val_feats, val_labels)
        elif not has_val:
            log.warning("method 'auto' without a validation split: using the training-free cache")
            self.head = "cache"
        else:
            scores = {m: self._fit_head(m, views, labels, val_feats, val_labels) for m in AUTO_CANDIDATES}
            correct = {}
            for m in AUTO_CANDIDATES:
                self.head = m
                correct[m] = self.logits(val_feats)[0].argmax(-1) == val_labels
            few = len(val_labels) < AUTO_MIN_VALIDATION
            self.head = "cache" if few else choose_head(correct)
            best = max(AUTO_CANDIDATES, key=lambda m: scores[m])
            self.report["auto"] = {
                "chosen": self.head,
                "val_accuracy": scores,
                "best_on_val": best,
                "standard_error": {m: paired_standard_error(correct[best], correct[m]) for m in AUTO_CANDIDATES},
                "rule": f"{len(val_labels)} validation images (< {AUTO_MIN_VALIDATION}): the training-free cache"
                if few
                else f"the first of {', '.join(AUTO_CANDIDATES)} within {ONE_SE:g} paired standard error of the best",
            }
            self._candidate_searches = {m: self.report.pop(f"search.{m}") for m in AUTO_CANDIDATES}
            self.report["search"] = {**self._candidate_searches[self.head], "val_accuracy": scores[self.head]}
        self.report["params"] = self.chosen_params()
        return self

    def as_method(self, method: str) -> FewShotClassifier:
        """This ``auto`` classifier, fitted with validation on every given expert, as the candidate ``method`` alone.

        ``auto`` fits every candidate with its own validation search, exactly as fitting that method
        alone would, so a sweep scores the candidates from auto's fit instead of fitting each twice
        (not when ``auto`` left experts out: ``method`` alone fuses every expert given).

        >>> clf.as_method("gda").report["params"]   # doctest: +SKIP
        {'gda_alpha': 1.0}
        """
        searches = self._candidate_searches
        if set(self.experts) != set(self.given_experts):  # its candidates were fitted on the chosen experts only
            searches = None
        if self.method != "auto" or searches is None or method not in searches:
            raise ConfigError(
                f"as_method needs an 'auto' classifier fitted with validation and one of {AUTO_CANDIDATES}"
            )
        clone = copy.copy(self)
        clone.method = clone.head = method
        clone.report = {"method": method, "search": searches[method]}
        clone.report["params"] = clone.chosen_params()
        return clone

    def _selectable(self) -> list[str]:
        """The branches ``auto`` may leave out: every expert but CLIP (its text prior is kept whenever given)."""
        return [n for n in self.experts if n != self.clip_branch]

    def _fit_expert_subsets(
        self,
        views: Mapping[str, torch.Tensor],
        labels: torch.Tensor,
        val_feats: Mapping[str, torch.Tensor],
        val_labels: torch.Tensor,
        classnames: Sequence[str],
    ) -> FewShotClassifier:
        """``auto`` over subsets of the experts: the subset (and head) with the best validation accuracy.

        Fusing every expert is what CaFo does, but its adaptive weights cannot save the fusion from a
        weak expert when the prior averages every branch: on DTD-10 at 1 shot, EfficientNet-Lite0 alone
        reaches 54 % and fused with a colour histogram (11 %) 27 % (cache, gda) to 49 % (linear). So
        ``auto`` fits itself on each subset (:func:`expert_subsets`, largest first) and keeps the first
        within one paired standard error of the best on validation (the one-SE rule, as for its heads):
        fewer experts only when they win beyond noise. The chosen experts are the classifier's from then
        on: ``predict`` runs only them and ``save`` records only them. ``report["experts"]`` has every
        subset's validation accuracy.
        """
        selectable = self._selectable()
        clip = [self.clip_branch] if self.clip_branch else []
        fitted: list[FewShotClassifier] = []
        correct: list[torch.Tensor] = []
        scores: dict[str, float] = {}
        for subset in expert_subsets(selectable):
            names = [*subset, *clip]
            sub = FewShotClassifier(
                [self.experts[n] for n in subset],
                clip=self.experts[self.clip_branch] if self.clip_branch else None,
                method="auto",
                fusion=self.fusion_arg,
                prior=self.prior_arg,
                store=self.store,
                templates=self.templates,
                prompts=self.prompts,
                augment_views=self.augment_views,
                epochs=self.epochs,
                lr=self.lr,
                seed=self.seed,
                select_experts=False,
            )
            sub.experts = {n: self.experts[n] for n in names}  # keep this classifier's branch names
            sub.clip_branch = self.clip_branch
            sub.fit_features(
                {n: views[n] for n in names},
                labels,
                {n: val_feats[n] for n in names},
                val_labels,
                classnames=classnames,
            )
            scores["+".join(subset)] = float(sub.report["auto"]["val_accuracy"][sub.head])
            fitted.append(sub)
            correct.append(sub.logits({n: val_feats[n] for n in names})[0].argmax(-1) == val_labels)
        # subsets come largest first, every named expert the reference: a smaller subset must beat every
        # larger one by more than one paired standard error (the one-SE rule, as for the heads)
        chosen = fitted[choose_within_noise(correct)]
        for attr in (
            "experts",
            "fusion",
            "cache",
            "gda",
            "gda_alpha",
            "linear",
            "linear_c",
            "linear_samples",
            "_candidate_searches",
        ):
            setattr(self, attr, getattr(chosen, attr))
        self.head, self.search, self.report = chosen.head, chosen.search, chosen.report
        self.report["experts"] = {"chosen": [n for n in self.experts if n != self.clip_branch], "val_accuracy": scores}
        self.report["params"] = self.chosen_params()
        return self

    def _fit_head(
        self,
        method: str,
        views: Mapping[str, torch.Tensor],
        labels: torch.Tensor,
        val_feats: Mapping[str, torch.Tensor] | None,
        val_labels: torch.Tensor | None,
    ) -> float:
        """Fit ``method``'s head (choosing its hyper-parameters on validation if given); its validation accuracy.

        Under ``auto`` each candidate's search summary goes to ``report["search.<method>"]``.
        """
        where = "search" if self.method != "auto" else f"search.{method}"
        has_val = val_feats is not None and val_labels is not None
        # every view of every support image is one sample for the heads fitted on samples (gda, linear)
        samples = self._concat({n: v.reshape(-1, v.shape[-1]) for n, v in views.items()})
        sample_labels = labels.repeat(next(iter(views.values())).shape[0])
        val_acc = float("nan")
        if method == "cache-train":
            result = train_keys(
                self.cache,
                dict(views),
                labels,
                val_feats,
                val_labels,
                epochs=self.epochs,
                lr=self.lr,
                seed=self.seed,
                with_prior=self.prior_kind == "text",
            )
            self.report["training"] = {"best_epoch": result.best_epoch, "history": result.history}
        if method in ("cache", "cache-train") and has_val:
            self.search = search_alpha_beta(self.cache, val_feats, val_labels)
            self.cache.alpha, self.cache.beta = self.search.alpha, self.search.beta
            self.report[where] = self.search.summary()
            val_acc = self.search.val_accuracy
        if method == "gda":
            self.gda = fit_gda(samples, sample_labels, len(self.classnames))
            if has_val:
                prior = self.cache.prior(_normalized(val_feats))
                self.gda_alpha, val_acc = search_gda_alpha(self.gda, self._concat(val_feats), prior, val_labels)
                self.report[where] = {
                    "gda_alpha": self.gda_alpha,
                    "val_accuracy": val_acc,
                    "gda_alphas": {"min": min(GDA_ALPHAS), "max": max(GDA_ALPHAS), "points": len(GDA_ALPHAS)},
                    "searched": prior is not None,  # without a prior every α gives the same predictions
                }
        if method == "linear":
            num = len(self.classnames)
            if has_val:
                # the plain images or every view as samples: validation decides (views helped on none of our sets)
                candidates = {"plain": (self._concat({n: v[0] for n, v in views.items()}), labels)}
                if next(iter(views.values())).shape[0] > 1:
                    candidates["views"] = (samples, sample_labels)
                shots = int(torch.bincount(labels, minlength=num).min())
                standardize = (False, True) if shots >= STANDARDIZE_MIN_SHOTS else (False,)
                self.linear, choice, val_acc = search_linear(
                    candidates, num, self._concat(val_feats), val_labels, standardize=standardize
                )
                self.linear_c, self.linear_samples = float(choice["C"]), str(choice["samples"])
                self.report[where] = {
                    "linear_c": self.linear_c,
                    "linear_samples": self.linear_samples,
                    "standardize_searched": list(standardize),
                    "val_accuracy": val_acc,
                    "cs": {"min": min(LINEAR_CS), "max": max(LINEAR_CS), "points": len(LINEAR_CS)},
                }
            else:
                self.linear = fit_linear(samples, sample_labels, num)
        return val_acc

    def chosen_params(self) -> dict[str, float | int | str]:
        """The hyper-parameters this method actually uses, as fitted (α/β of the cache are unused by ``gda``)."""
        if self.cache is None or self.head == "zero-shot":
            return {}
        chosen: dict[str, str] = {"head": self.head} if self.method == "auto" else {}
        if "experts" in self.report:  # auto's choice of experts to fuse
            chosen["experts"] = "+".join(self.report["experts"]["chosen"])
        if self.head == "gda":
            return {**chosen, "gda_alpha": self.gda_alpha}
        if self.head == "linear":
            return {**chosen, "C": self.linear_c, "samples": self.linear_samples}
        params: dict[str, float | int | str] = {**chosen, "alpha": self.cache.alpha, "beta": self.cache.beta}
        if "training" in self.report:
            params["best_epoch"] = self.report["training"]["best_epoch"]
        return params

    def _val(self, val: LabelledImages | None):
        if val is None or len(val) == 0:
            log.warning("no validation split: keeping default hyper-parameters (alpha=%s, beta=%s)", 1.0, 5.5)
            return None, None
        if val.classnames != self.classnames:
            raise ConfigError("validation classes differ from support classes")
        with self._bar("validation features", len(val) * len(self.experts)) as bar:
            f = self.extract(val.paths, on_done=bar.advance)
        return f.by_branch, torch.tensor(val.labels)[torch.from_numpy(f.ok)]

    def _prior_weights(self, keys: Mapping[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.prior_kind == "none":
            return {}
        if self.prior_kind == "prototype":
            num = len(self.classnames)
            return {
                n: torch.nn.functional.normalize(
                    torch.stack(
                        [torch.nn.functional.normalize(k.float(), dim=-1)[labels == c].mean(0) for c in range(num)]
                    ),
                    dim=-1,
                ).T
                for n, k in keys.items()
            }
        clip: ClipExpert = self.experts[self.clip_branch]  # type: ignore[assignment]
        if self.prompts:
            prompts = {c: list(self.prompts.get(c, [])) or [f"a photo of a {c}."] for c in self.classnames}
            return {self.clip_branch: clip.class_weights_from_prompts(prompts)}
        return {self.clip_branch: clip.class_weights(list(self.classnames), self.templates)}

    def _concat(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([torch.nn.functional.normalize(feats[n].float(), dim=-1) for n in self.experts], dim=-1)

    # ------------------------------------------------------------------ predict

    @torch.no_grad()
    def logits(self, feats: Mapping[str, torch.Tensor]):
        """Final logits for features of every branch, plus the parts (prior, branch shares, weights)."""
        if self.cache is None:
            raise ConfigError("fit() or load() the classifier first")
        self.cache.eval()
        if self.head == "zero-shot":
            prior = self.cache.prior(_normalized(feats))
            return prior, {"prior": prior}, None
        if self.head == "linear":
            logits = self.linear.logits(self._concat(feats))
            return logits, {"linear": logits}, None
        if self.head == "gda":
            prior = self.cache.prior(_normalized(feats))
            gda = self.gda_alpha * self.gda.logits(self._concat(feats))
            parts = {"gda": gda} if prior is None else {"prior": prior, "gda": gda}
            return gda if prior is None else prior + gda, parts, None
        out = self.cache(feats)
        parts = dict(out.branches)
        if out.prior is not None:
            parts = {"prior": out.prior, **parts}
        return out.logits, parts, out.weights

    def predict(self, images: Sequence[ImageSource]) -> list[FewShotPrediction]:
        """Label, class probabilities and per-branch contributions for each image, in order."""
        with self._bar("features", len(images) * len(self.experts)) as bar:
            feats = self.extract(images, on_done=bar.advance)
        preds: list[FewShotPrediction] = []
        if feats.ok.any():
            logits, parts, weights = self.logits(feats.by_branch)
            probs = logits.softmax(-1)
        row = 0
        for i, src in enumerate(images):
            name = str(src) if isinstance(src, (str, Path)) else f"<{type(src).__name__}>"
            if not feats.ok[i]:
                error, reason = feats.errors.get(i, "unreadable"), feats.reasons.get(i)
                preds.append(FewShotPrediction(name, None, error=error, reason=reason))
                continue
            c = int(probs[row].argmax())
            preds.append(
                FewShotPrediction(
                    name,
                    self.classnames[c],
                    {cn: float(p) for cn, p in zip(self.classnames, probs[row])},
                    {k: float(v[row, c]) for k, v in parts.items()},
                    {} if weights is None else {n: float(w) for n, w in zip(self.cache.names, weights[row])},
                )
            )
            row += 1
        return preds

    def evaluate(self, data: LabelledImages) -> dict[str, Any]:
        """Accuracy and confusion matrix on a labelled split (unreadable images count as failures, not errors)."""
        preds = self.predict(data.paths)
        index = {c: i for i, c in enumerate(self.classnames)}
        scored = [(y, index[p.label]) for p, y in zip(preds, data.labels) if p.label is not None]
        return self._scores([y for y, _ in scored], [c for _, c in scored], failed=len(preds) - len(scored))

    @torch.no_grad()
    def evaluate_features(
        self, feats: Mapping[str, torch.Tensor], labels: torch.Tensor, *, failed: int = 0
    ) -> dict[str, Any]:
        """:meth:`evaluate` on features already extracted (``failed``: images that could not be read)."""
        predicted = self.logits(feats)[0].argmax(-1) if len(labels) else torch.zeros(0, dtype=torch.long)
        return self._scores(labels.tolist(), predicted.tolist(), failed=failed)

    def _scores(self, labels: Sequence[int], predicted: Sequence[int], *, failed: int) -> dict[str, Any]:
        confusion = np.zeros((len(self.classnames),) * 2, dtype=int)
        np.add.at(confusion, (np.asarray(labels, dtype=int), np.asarray(predicted, dtype=int)), 1)
        scored = int(confusion.sum())
        return {
            "accuracy": float(np.trace(confusion) / scored) if scored else float("nan"),
            "evaluated": scored,
            "failed": failed,
            "confusion": confusion.tolist(),
            "classnames": list(self.classnames),
        }

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """``model.safetensors`` (keys, labels, text and GDA weights) + ``config.json``; no pickle."""
        from safetensors.torch import save_file

        if self.cache is None:
            raise ConfigError("nothing to save: fit() the classifier first")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {f"keys.{n}": self.cache.keys_[n].detach().contiguous() for n in self.cache.names}
        tensors["labels"] = self.cache.labels
        for n, w in self.cache.prior_weights().items():
            tensors[f"prior.{n}"] = w.contiguous()
        if self.gda is not None:
            tensors["gda.weight"], tensors["gda.bias"] = self.gda.weight.contiguous(), self.gda.bias.contiguous()
        if self.linear is not None:
            tensors["linear.weight"], tensors["linear.bias"] = self.linear.weight, self.linear.bias
        save_file(tensors, str(path / "model.safetensors"))
        config = {
            "format": FORMAT,
            "classnames": list(self.classnames),
            "method": self.method,
            "fusion": self.fusion,
            "prior": self.prior_kind,
            "alpha": self.cache.alpha,
            "beta": self.cache.beta,
            "gda_alpha": self.gda_alpha,
            "head": self.head,
            "linear_c": self.linear_c,
            "linear_samples": self.linear_samples,
            "clip_branch": self.clip_branch,
            "branches": [{"name": n, "spec": stored_spec(e), "identity": e.identity} for n, e in self.experts.items()],
            "report": self.report,
        }
        (path / "config.json").write_text(json.dumps(config, indent=2, default=str))
        return path

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        experts: Mapping[str, Expert] | None = None,
        store: FeatureStore | None = None,
        settings: Settings | None = None,
        **expert_overrides: Any,
    ) -> FewShotClassifier:
        """Rebuild a saved classifier; experts given by branch name are used as they are.

        The others are re-created from the file's stored specs, which may hold only plain fields
        (architecture, weights, preprocessing; see :mod:`experts.stored`): device, offline mode,
        trust flags and hub repos come from ``settings`` (default: ``Settings()``, the user's),
        then ``expert_overrides`` such as ``device="cuda"``. Each identity must match the saved one.
        """
        from safetensors.torch import load_file

        path = Path(path)
        config_file = path / "config.json"
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"{config_file}: not a readable saved classifier config ({err})") from err
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        if found != FORMAT:
            raise ConfigError(f"{path}: not a saved few-shot classifier ({found!r})")
        branches = config.get("branches")
        if not isinstance(branches, list) or not all(isinstance(b, dict) and "name" in b for b in branches):
            raise ConfigError(f"{config_file}: 'branches' must be a list of {{'name', 'spec', 'identity'}} objects")
        tensors = load_file(str(path / "model.safetensors"))
        built: dict[str, Expert] = {}
        for b in branches:
            expert = (experts or {}).get(b["name"])
            if expert is None:
                if not b.get("spec"):
                    raise ConfigError(f"branch {b['name']!r} was not made by create_expert; pass experts={{...}}")
                settings = settings or Settings()
                expert = expert_from_stored(
                    b["spec"], source=str(config_file), runtime=settings.expert_kwargs, overrides=expert_overrides
                )
            if expert.identity != b.get("identity"):
                raise ConfigError(
                    f"branch {b['name']!r}: expert identity {expert.identity} differs from the saved one "
                    f"{b['identity']}; its features would not match the cache keys"
                )
            built[b["name"]] = expert
        clip = built.get(config["clip_branch"]) if config["clip_branch"] else None
        others = [e for n, e in built.items() if n != config["clip_branch"]]
        clf = cls(
            others, clip=clip, method=config["method"], fusion=config["fusion"], prior=config["prior"], store=store
        )
        clf.experts = clf.given_experts = built
        clf.classnames = tuple(config["classnames"])
        clf.cache = AdaptiveCache(
            {n: tensors[f"keys.{n}"] for n in built},
            tensors["labels"],
            len(clf.classnames),
            prior_weights={n: tensors[f"prior.{n}"] for n in built if f"prior.{n}" in tensors},
            alpha=config["alpha"],
            beta=config["beta"],
            fusion=config["fusion"],
        )
        with torch.no_grad():  # trained keys are stored as-is (the constructor would renormalize them)
            for n in built:
                clf.cache.keys_[n].copy_(tensors[f"keys.{n}"])
        if "gda.weight" in tensors:
            clf.gda = GDAHead(tensors["gda.weight"], tensors["gda.bias"])
        clf.gda_alpha = config["gda_alpha"]
        if "linear.weight" in tensors:
            clf.linear = LinearHead(tensors["linear.weight"], tensors["linear.bias"])
        clf.linear_c = config.get("linear_c", 1.0)
        clf.linear_samples = str(config.get("linear_samples", "views"))
        head = config.get("head", clf.method)
        if head not in METHODS or head == "auto":
            raise ConfigError(f"{config_file}: 'head' must be one of {[m for m in METHODS if m != 'auto']}")
        clf.head = head
        clf.report = config.get("report", {})
        return clf


def expert_subsets(names: Sequence[str]) -> list[tuple[str, ...]]:
    """The subsets of ``names`` that ``auto`` tries, largest first: all of them up to
    :data:`EXHAUSTIVE_SUBSETS` experts; beyond, all, each all-but-one and each alone.

    >>> expert_subsets(["a", "b"])
    [('a', 'b'), ('a',), ('b',)]
    """
    names = list(names)
    if len(names) <= EXHAUSTIVE_SUBSETS:
        sizes = range(len(names), 0, -1)
        return [c for r in sizes for c in itertools.combinations(names, r)]
    return [tuple(names), *itertools.combinations(names, len(names) - 1), *((n,) for n in names)]


def _normalized(feats: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: torch.nn.functional.normalize(f.float(), dim=-1) for n, f in feats.items()}


def nearest_centroid_accuracy(
    support: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    query: Mapping[str, torch.Tensor],
    query_labels: torch.Tensor,
) -> float:
    """Baseline: cosine to each class's mean normalized feature (branches concatenated)."""

    def cat(f):
        return torch.cat([torch.nn.functional.normalize(f[n].float(), dim=-1) for n in support], dim=-1)

    s, q = cat(support), cat(query)
    centroids = torch.stack([s[labels == c].mean(0) for c in range(int(labels.max()) + 1)])
    return accuracy(q @ torch.nn.functional.normalize(centroids, dim=-1).T, query_labels)
