"""Few-shot classification: experts → feature store → adaptive cache → predictions.

    clf = FewShotClassifier([create_expert("timm", ...)], store=DirectoryStore("~/.cache/eb"))
    clf.fit(support, val=val)              # α/β chosen on `val`, never on the test split
    preds = clf.predict(["a.jpg", "b.jpg"])
    clf.save("model/"); FewShotClassifier.load("model/")

Methods: ``"cache"`` (training-free CaFo/Tip-Adapter cache), ``"cache-train"``
(learnable keys), ``"gda"`` (closed-form Gaussian head), ``"zero-shot"`` (the
prior alone). The prior is CLIP's zero-shot classifier (from templates or
LLM-written class descriptions) when a ``clip`` expert is given; otherwise each
branch's class prototypes (``prior="prototype"``), so the cache refines a
nearest-prototype classifier. Fusion ``"auto"`` is CaFo's adaptive ensemble for
two or more branches and Tip-Adapter's sum for one.
"""

from __future__ import annotations

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
from cache.search import accuracy, search_alpha_beta, search_gda_alpha
from cache.store import FeatureStore
from cache.training import train_keys
from experts import ConfigError, Expert, ItemResult, create_expert
from experts.clip import ClipExpert
from experts.images import ImageSource
from workflows.datasets import LabelledImages
from workflows.store_runner import run_through_store

log = logging.getLogger(__name__)

METHODS = ("cache", "cache-train", "gda", "zero-shot")
FORMAT = "expertbridge.fewshot/1"


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
        self.method, self.store = method, store
        self.templates, self.prompts = templates, prompts
        self.augment_views, self.epochs, self.lr, self.seed, self.progress = augment_views, epochs, lr, seed, progress
        self.classnames: tuple[str, ...] = ()
        self.cache: AdaptiveCache | None = None
        self.gda: GDAHead | None = None
        self.gda_alpha = 1.0
        self.report: dict[str, Any] = {}

    # ------------------------------------------------------------------ features

    def extract(self, sources: Sequence[ImageSource], *, variant: Mapping | None = None, transform=None) -> Features:
        """Features of every branch through the store; an item failing in any branch is dropped with its error."""
        ok = np.ones(len(sources), dtype=bool)
        errors: dict[int, str] = {}
        reasons: dict[int, str] = {}
        results: dict[str, list[ItemResult]] = {}
        for name, expert in self.experts.items():
            results[name], _ = run_through_store(
                expert, sources, self.store, variant=variant, transform=transform, progress=self.progress
            )
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

    def _views(self, sources: Sequence[str]) -> Features:
        stacks: dict[str, list[torch.Tensor]] = {n: [] for n in self.experts}
        ok = np.ones(len(sources), dtype=bool)
        errors: dict[int, str] = {}
        per_view = []
        for v in range(max(1, self.augment_views)):
            if v == 0:  # the plain image: shares its store entry with ordinary extraction
                f = self.extract(sources)
            else:
                f = self.extract(
                    sources,
                    variant={"aug": "rrc0.5-flip", "view": v, "seed": self.seed},
                    transform=augmentation(v, self.seed),
                )
            ok &= f.ok
            errors.update(f.errors)
            per_view.append(f)
        for f in per_view:
            keep = ok[f.ok]  # rows of this view that survive in every view
            for n in self.experts:
                stacks[n].append(f.by_branch[n][torch.from_numpy(keep)])
        return Features({n: torch.stack(s) for n, s in stacks.items()}, ok, errors)

    # ------------------------------------------------------------------ fit

    def fit(self, support: LabelledImages, val: LabelledImages | None = None) -> FewShotClassifier:
        """Build the cache from ``support``; choose hyper-parameters on ``val`` (if given)."""
        self.classnames = support.classnames
        labels_all = torch.tensor(support.labels)
        # Keys are the mean of augmented views of each support image (Tip-Adapter), or plain features.
        views = self._views(support.paths) if self.augment_views > 1 else None
        if views is not None:
            keys = Features({n: v.mean(0) for n, v in views.by_branch.items()}, views.ok, views.errors)
            plain = {n: v[0] for n, v in views.by_branch.items()}
        else:
            keys = self.extract(support.paths)
            plain = keys.by_branch
        if keys.errors:
            log.warning("dropped %d support images: %s", len(keys.errors), keys.errors)
        labels = labels_all[torch.from_numpy(keys.ok)]
        missing = set(range(len(self.classnames))) - set(labels.tolist())
        if missing:
            raise ConfigError(f"no usable support image for classes {[self.classnames[i] for i in sorted(missing)]}")
        self.cache = AdaptiveCache(
            keys.by_branch,
            labels,
            len(self.classnames),
            prior_weights=self._prior_weights(plain, labels),
            fusion=self.fusion,
        )
        self.report = {"support": len(support), "support_dropped": keys.errors, "method": self.method}
        val_feats, val_labels = self._val(val)

        if self.method == "cache-train":
            train_views = views.by_branch if views is not None else {n: k[None] for n, k in keys.by_branch.items()}
            result = train_keys(
                self.cache,
                train_views,
                labels,
                val_feats,
                val_labels,
                epochs=self.epochs,
                lr=self.lr,
                seed=self.seed,
                with_prior=self.prior_kind == "text",
            )
            self.report["training"] = {"best_epoch": result.best_epoch, "history": result.history}
        if self.method in ("cache", "cache-train") and val_feats is not None:
            search = search_alpha_beta(self.cache, val_feats, val_labels)
            self.cache.alpha, self.cache.beta = search.alpha, search.beta
            self.report["search"] = search.to_dict()
        if self.method == "gda":
            self.gda = fit_gda(self._concat(keys.by_branch), labels, len(self.classnames))
            if val_feats is not None:
                prior = self.cache.prior(_normalized(val_feats))
                self.gda_alpha, val_acc = search_gda_alpha(self.gda, self._concat(val_feats), prior, val_labels)
                self.report["search"] = {"gda_alpha": self.gda_alpha, "val_accuracy": val_acc}
        self.report.update({"alpha": self.cache.alpha, "beta": self.cache.beta, "gda_alpha": self.gda_alpha})
        return self

    def _val(self, val: LabelledImages | None):
        if val is None or len(val) == 0:
            log.warning("no validation split: keeping default hyper-parameters (alpha=%s, beta=%s)", 1.0, 5.5)
            return None, None
        if val.classnames != self.classnames:
            raise ConfigError("validation classes differ from support classes")
        f = self.extract(val.paths)
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
        if self.method == "zero-shot":
            prior = self.cache.prior(_normalized(feats))
            return prior, {"prior": prior}, None
        if self.method == "gda":
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
        feats = self.extract(images)
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
        confusion = np.zeros((len(self.classnames),) * 2, dtype=int)
        for p, y in zip(preds, data.labels):
            if p.label is not None:
                confusion[y, index[p.label]] += 1
        scored = int(confusion.sum())
        return {
            "accuracy": float(np.trace(confusion) / scored) if scored else float("nan"),
            "evaluated": scored,
            "failed": len(preds) - scored,
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
            "clip_branch": self.clip_branch,
            "branches": [{"name": n, "spec": e.spec, "identity": e.identity} for n, e in self.experts.items()],
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
        **expert_overrides: Any,
    ) -> FewShotClassifier:
        """Rebuild a saved classifier. Experts are re-created from their saved specs (``expert_overrides``
        such as ``device="cuda"`` apply to all) unless given by branch name; their identity must match."""
        from safetensors.torch import load_file

        path = Path(path)
        config = json.loads((path / "config.json").read_text())
        if config.get("format") != FORMAT:
            raise ConfigError(f"{path}: not a saved few-shot classifier ({config.get('format')!r})")
        tensors = load_file(str(path / "model.safetensors"))
        built: dict[str, Expert] = {}
        for b in config["branches"]:
            expert = (experts or {}).get(b["name"])
            if expert is None:
                if not b["spec"]:
                    raise ConfigError(f"branch {b['name']!r} was not made by create_expert; pass experts={{...}}")
                spec = dict(b["spec"])
                expert = create_expert(spec.pop("name"), **{**spec, **expert_overrides})
            if expert.identity != b["identity"]:
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
        clf.experts = built
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
        clf.report = config.get("report", {})
        return clf


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
