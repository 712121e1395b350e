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
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cache.fit_heads import STANDARDIZE_MIN_SHOTS
from cache.head import (
    AUTO_CANDIDATES,
    AUTO_MIN_VALIDATION,
    EXHAUSTIVE_SUBSETS,
    METHODS,
    FewShotHead,
    choose_head,
)
from cache.head import branch_subsets as expert_subsets
from cache.search import accuracy
from cache.store import FeatureStore
from experts import ConfigError, Expert
from experts.clip import ClipExpert
from experts.file_hashes import FileHashes
from experts.images import ImageSource
from workflows.datasets import LabelledImages
from workflows.fewshot_features import Features, augmentation, extract_features, view_inputs
from workflows.fewshot_saved import FORMAT, load_classifier, save_classifier
from workflows.progress import Progress
from workflows.settings import Settings

log = logging.getLogger(__name__)

#: the few-shot model's names, re-exported from :mod:`cache.head` (where the head and its rules live)
__all__ = [
    "AUTO_CANDIDATES",
    "AUTO_MIN_VALIDATION",
    "EXHAUSTIVE_SUBSETS",
    "FORMAT",
    "Features",
    "METHODS",
    "STANDARDIZE_MIN_SHOTS",
    "FewShotClassifier",
    "FewShotPrediction",
    "augmentation",
    "choose_head",
    "expert_subsets",
    "nearest_centroid_accuracy",
    "view_inputs",
]


def _delegate(name: str, doc: str) -> property:
    """An attribute of the fitted :class:`~cache.head.FewShotHead` (``clf.model``), read and set through."""
    return property(lambda self: getattr(self.model, name), lambda self, v: setattr(self.model, name, v), doc=doc)


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


class FewShotClassifier:
    """A few-shot classifier over any number of feature experts (and optionally CLIP's zero-shot prior).

    The experts and images side: features through the store (:meth:`extract`, augmented
    :meth:`support_views`), CLIP's text prior, predictions per image, save/load with the experts' specs.
    The model itself is :attr:`model`, a :class:`cache.head.FewShotHead` on arrays.
    """

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
        #: ``auto`` with validation also chooses which experts to fuse (see :meth:`cache.head.FewShotHead.fit`)
        self.select_experts = select_experts
        self.method, self.store = method, store
        self.templates, self.prompts = templates, prompts
        self.augment_views, self.epochs, self.lr, self.seed, self.progress = augment_views, epochs, lr, seed, progress
        self.classnames: tuple[str, ...] = ()
        #: the few-shot head itself (arrays in, arrays out); fitting replaces it with a new one
        self.model = self._new_head()

    head = _delegate("active", "the head that makes predictions: ``method``, or for ``auto`` the one it chose")
    report = _delegate("report", "what the fit did and chose (JSON-safe)")
    search = _delegate("search", "the whole α/β validation grid of the last fit (``report['search']`` sums it up)")
    cache = _delegate("cache", "the fitted :class:`~cache.adapter.AdaptiveCache` (also the prior of ``gda``)")
    gda = _delegate("gda", "the fitted GDA head (``method`` ``gda`` or ``auto``)")
    gda_alpha = _delegate("gda_alpha", "GDA's α in ``prior + α · gda``")
    linear = _delegate("linear", "the fitted linear head (``method`` ``linear`` or ``auto``)")
    linear_c = _delegate("linear_c", "the linear head's C")
    linear_samples = _delegate("linear_samples", "the linear head's training samples: ``plain`` or ``views``")

    def _new_head(self) -> FewShotHead:
        return FewShotHead(
            self.method,
            fusion=self.fusion_arg,
            prior=self.prior_kind,
            keep=(self.clip_branch,) if self.clip_branch else (),
            epochs=self.epochs,
            lr=self.lr,
            seed=self.seed,
            select_branches=self.select_experts,
        )

    # ------------------------------------------------------------------ features

    def extract(self, sources: Sequence[ImageSource], **options: Any) -> Features:
        """Features of every branch through the store; an item failing in any branch is dropped with its error.

        ``options`` are :func:`~workflows.fewshot_features.extract_features`'s (``variant``, ``transform``,
        ``on_done``, ``hashes``), documented there once.
        """
        return extract_features(self.experts, self.store, sources, **options)

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
        ``val_feats[branch]`` is ``(M, D)``; without it the default hyper-parameters are kept. ``auto``
        may fuse fewer experts than given: the chosen ones are the classifier's from then on (``predict``
        runs only them, ``save`` records only them).
        """
        self.classnames = tuple(classnames)
        if set(views) == set(self.given_experts):  # a refit on every expert's features: all may be chosen again
            self.experts, self.fusion = dict(self.given_experts), self._given_fusion
        self.model = self._new_head()
        text = self._text_weights() if self.prior_kind == "text" else None
        self.model.fit(views, labels, val_feats, val_labels, classnames=classnames, text_weights=text)
        self.experts = {
            n: self.given_experts[n] if n in self.given_experts else self.experts[n] for n in self.model.branches
        }
        self.fusion = self.model.fusion
        return self

    def as_method(self, method: str) -> FewShotClassifier:
        """This ``auto`` classifier, fitted with validation on every given expert, as the candidate ``method`` alone.

        ``auto`` fits every candidate with its own validation search, exactly as fitting that method
        alone would, so a sweep scores the candidates from auto's fit instead of fitting each twice
        (not when ``auto`` left experts out: ``method`` alone fuses every expert given).

        >>> clf.as_method("gda").report["params"]   # doctest: +SKIP
        {'gda_alpha': 1.0}
        """
        if set(self.experts) != set(self.given_experts):  # its candidates were fitted on the chosen experts only
            raise ConfigError(
                f"as_method needs an 'auto' classifier fitted with validation and one of {AUTO_CANDIDATES}"
            )
        clone = copy.copy(self)
        clone.model = self.model.as_method(method)
        clone.method = method
        return clone

    def chosen_params(self) -> dict[str, float | int | str]:
        """The hyper-parameters this method actually uses, as fitted (α/β of the cache are unused by ``gda``)."""
        return self.model.chosen_params()

    def _val(self, val: LabelledImages | None):
        if val is None or len(val) == 0:
            log.warning("no validation split: keeping default hyper-parameters (alpha=%s, beta=%s)", 1.0, 5.5)
            return None, None
        if val.classnames != self.classnames:
            raise ConfigError("validation classes differ from support classes")
        with self._bar("validation features", len(val) * len(self.experts)) as bar:
            f = self.extract(val.paths, on_done=bar.advance)
        return f.by_branch, torch.tensor(val.labels)[torch.from_numpy(f.ok)]

    def _text_weights(self) -> dict[str, torch.Tensor]:
        """CLIP's zero-shot classifier ``(D, C)`` for the text prior: from ``prompts`` or ``templates``."""
        clip: ClipExpert = self.experts[self.clip_branch]  # type: ignore[assignment]
        if self.prompts:
            prompts = {c: list(self.prompts.get(c, [])) or [f"a photo of a {c}."] for c in self.classnames}
            return {self.clip_branch: clip.class_weights_from_prompts(prompts)}
        return {self.clip_branch: clip.class_weights(list(self.classnames), self.templates)}

    def _concat(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.model.concat(feats)

    # ------------------------------------------------------------------ predict

    def logits(self, feats: Mapping[str, torch.Tensor]):
        """Final logits for features of every branch, plus the parts (prior, branch shares, weights)."""
        return self.model.logits(feats)

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
        return save_classifier(self, path)

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
        return load_classifier(cls, path, experts=experts, store=store, settings=settings, **expert_overrides)


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
