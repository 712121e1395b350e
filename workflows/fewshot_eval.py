"""Accuracy vs shots: every method over several seeds, with a nearest-centroid baseline.

Features come through the store, so each image is encoded once for the whole
sweep (and never again on a re-run). Hyper-parameters are chosen on each run's
validation split; the test split is only scored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from cache.store import FeatureStore
from experts import Expert
from experts.clip import ClipExpert
from workflows.datasets import LabelledImages, few_shot_splits
from workflows.fewshot import FewShotClassifier, nearest_centroid_accuracy

BASELINE = "centroid"


@dataclass
class SweepResult:
    """One row per (method, shots, seed), plus the confusion matrix of the last run of each method."""

    rows: list[dict] = field(default_factory=list)
    confusions: dict[str, dict] = field(default_factory=dict)

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
        return {"rows": self.rows, "confusions": self.confusions, "table": self.table()}


def run_sweep(
    splits: dict[str, LabelledImages],
    experts: Sequence[Expert],
    *,
    clip: ClipExpert | None = None,
    shots: Sequence[int] = (1, 2, 4, 8, 16),
    seeds: Sequence[int] = (0, 1, 2),
    methods: Sequence[str] = ("cache", "cache-train", "gda"),
    store: FeatureStore | None = None,
    augment_views: int = 10,
    epochs: int = 20,
    prompts: Mapping[str, Sequence[str]] | None = None,
    on_run: Callable[[dict], None] | None = None,
) -> SweepResult:
    """Fit and score every method for every shot count and seed."""
    result = SweepResult()
    if clip is not None and "zero-shot" not in methods:
        methods = ("zero-shot", *methods)
    for k in shots:
        for seed in seeds:
            support, val, test = few_shot_splits(splits, k, seed)
            for method in methods:
                clf = FewShotClassifier(
                    experts,
                    clip=clip,
                    method=method,
                    store=store,
                    augment_views=augment_views,
                    epochs=epochs,
                    prompts=prompts,
                    seed=seed,
                )
                clf.fit(support, val)
                scored = clf.evaluate(test)
                row = {
                    "method": method,
                    "shots": k,
                    "seed": seed,
                    "accuracy": scored["accuracy"],
                    "alpha": clf.report.get("alpha"),
                    "beta": clf.report.get("beta"),
                    "val_accuracy": clf.report.get("search", {}).get("val_accuracy"),
                    "support": len(support),
                    "validation": len(val),
                    "test": scored["evaluated"],
                }
                result.rows.append(row)
                result.confusions[method] = {"shots": k, "seed": seed, **scored}
                if on_run:
                    on_run(row)
            baseline = _centroid(clf, support, test)
            row = {"method": BASELINE, "shots": k, "seed": seed, "accuracy": baseline, "support": len(support)}
            result.rows.append(row)
            if on_run:
                on_run(row)
    return result


def _centroid(clf: FewShotClassifier, support: LabelledImages, test: LabelledImages) -> float:
    """Nearest class mean on the same (plain, un-augmented) features of the same experts."""
    s, t = clf.extract(support.paths), clf.extract(test.paths)
    feats = {n: f for n, f in s.by_branch.items()}
    return nearest_centroid_accuracy(
        feats,
        torch.tensor(support.labels)[torch.from_numpy(s.ok)],
        t.by_branch,
        torch.tensor(test.labels)[torch.from_numpy(t.ok)],
    )
