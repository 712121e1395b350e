"""Few-shot accuracy of every subset of experts: does fusing hold up when one expert is weak?

    python bench/fewshot_experts.py ../shared/data/dtd10 --experts timm,timm.lite2,dinov2
    python bench/fewshot_experts.py ../shared/data/dtd10 --experts timm,color_histogram --shots 16 --seeds 1

Every image's features are extracted once (through the feature store, as ``fewshot eval`` does:
a warm store encodes nothing), then for each non-empty subset of ``--experts`` every method of
``--methods`` is fitted with its hyper-parameters chosen on the dataset's validation split and
scored on its test split, for every shot count and seed, next to the logistic-regression baseline
on the same features. Expert names are ``fewshot eval``'s (presets included); their weights come
from the settings (``EXPERTBRIDGE_*``). ``auto`` chooses which experts to fuse on validation;
``auto-all`` is ``auto`` fusing every expert given (``select_experts=False``, what ``auto`` did before).
``--subsets all`` fits only the full set (e.g. to re-measure ``auto`` after the singles are known).

Printed: a table (subset × method, mean ± std test accuracy per shot count), then per method and
shot count the fused result (all experts) minus the best single expert's; the last line is the
headline: the largest shortfall of fused below the best single expert (the target is ≤ 0.5 points).
``--json PATH`` writes every row. Run with ``nice``: fitting is single-threaded, extraction is not.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import numpy as np  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--experts", default="timm,timm.lite2,dinov2")
    parser.add_argument("--methods", default="auto,auto-all,cache,gda,linear", help="auto-all: auto fusing all experts")
    parser.add_argument("--shots", default="1,4,16")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument(
        "--subsets", choices=("every", "all"), default="every", help="every subset of the experts, or only all of them"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from cache.store import DirectoryStore
    from workflows.commands.fewshot import _expert
    from workflows.cpu_tuning import tune_for_busy_cpus
    from workflows.datasets import few_shot_splits, load_splits
    from workflows.fewshot import FewShotClassifier
    from workflows.fewshot_eval import FeatureBank, _one_thread, logistic_regression_accuracy
    from workflows.settings import Settings

    tune_for_busy_cpus()
    settings = Settings()
    names = [n.strip() for n in args.experts.split(",") if n.strip()]
    experts = [_expert(settings, n) for n in names]
    methods = [m.strip() for m in args.methods.split(",")]
    shots = [int(s) for s in args.shots.split(",")]
    splits = load_splits(args.data)
    store = DirectoryStore(settings.store_dir)

    def classifier(members, method="cache", seed=0):
        # "auto-all": auto fusing every expert given, without choosing a subset on validation (the old auto)
        select = method != "auto-all"
        method = "auto" if method == "auto-all" else method
        return FewShotClassifier(
            members, method=method, store=store, augment_views=args.views, seed=seed, select_experts=select
        )

    runs = [(k, seed, few_shot_splits(splits, k, seed)) for k in shots for seed in range(args.seeds)]
    support_paths = list(dict.fromkeys(p for *_, (s, _, _) in runs for p in s.paths))
    paths = list(dict.fromkeys(p for *_, split in runs for data in split for p in data.paths))
    everyone = classifier(experts)
    start = time.perf_counter()
    bank = FeatureBank.extract(everyone, paths, support_paths, progress=True)
    extract_s = time.perf_counter() - start
    branch_of = {id(e): b for b, e in everyone.experts.items()}  # expert → its branch name in the bank

    subsets = [c for r in range(1, len(experts) + 1) for c in itertools.combinations(range(len(experts)), r)]
    if args.subsets == "all":
        subsets = subsets[-1:]
    rows: list[dict] = []
    start = time.perf_counter()
    with _one_thread():
        for k, seed, (support, val, test) in runs:
            views_all, labels = bank.support(support)
            val_all, val_labels, _ = bank.split(val)
            test_all, test_labels, failed = bank.split(test)
            for subset in subsets:
                label = "+".join(names[i] for i in subset)
                members = [experts[i] for i in subset]
                for method in methods:
                    clf = classifier(members, method, seed)
                    pick = {b: branch_of[id(e)] for b, e in clf.experts.items()}  # this classifier's names

                    def take(feats, pick=pick):
                        return {b: feats[src] for b, src in pick.items()}

                    clf.fit_features(take(views_all), labels, take(val_all), val_labels, classnames=support.classnames)
                    acc = clf.evaluate_features(take(test_all), test_labels, failed=failed)["accuracy"]
                    rows.append(
                        {
                            "experts": label,
                            "method": method,
                            "shots": k,
                            "seed": seed,
                            "accuracy": acc,
                            "params": clf.report.get("params", {}),
                            "chosen_experts": clf.report.get("experts", {}).get("chosen"),
                        }
                    )
                acc, _ = logistic_regression_accuracy(
                    take(views_all), labels, take(val_all), val_labels, take(test_all), test_labels
                )
                rows.append({"experts": label, "method": "logreg", "shots": k, "seed": seed, "accuracy": acc})
                print(
                    f"  {k}-shot seed {seed} {label}: "
                    + ", ".join(f"{r['method']} {r['accuracy']:.1%}" for r in rows[-len(methods) - 1 :]),
                    flush=True,
                )
    fit_s = time.perf_counter() - start

    def mean_std(label, method, k):
        accs = [r["accuracy"] for r in rows if (r["experts"], r["method"], r["shots"]) == (label, method, k)]
        return 100 * float(np.mean(accs)), 100 * float(np.std(accs))

    labels = ["+".join(names[i] for i in s) for s in subsets]
    print(
        f"\n{args.data.name}: test accuracy %, mean ± std over {args.seeds} seed(s), {args.views} views; "
        f"features {extract_s:.0f} s, fits {fit_s:.0f} s (2 shared cores)"
    )
    print(f"{'experts':<32} {'method':<8} " + " ".join(f"{k:>2}-shot      " for k in shots))
    for label in labels:
        for method in [*methods, "logreg"]:
            cells = " ".join(f"{m:5.1f} ± {s:3.1f}  " for m, s in (mean_std(label, method, k) for k in shots))
            print(f"{label:<32} {method:<8} {cells}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "experts": names, "shots": shots, "seeds": args.seeds}))
    fused = labels[-1]
    singles = labels[: len(names)]
    if len(labels) == 1:
        print(
            f"{fused}: "
            + "; ".join(f"{m} " + ", ".join(f"{k}-shot {mean_std(fused, m, k)[0]:.1f}" for k in shots) for m in methods)
        )
        return 0
    worst = None
    print(f"\nfused ({fused}) minus the best single expert, same method (points):")
    for method in methods:
        for k in shots:
            best = max(singles, key=lambda s, method=method, k=k: mean_std(s, method, k)[0])
            gap = mean_std(fused, method, k)[0] - mean_std(best, method, k)[0]
            if worst is None or gap < worst[0]:
                worst = (gap, method, k, best)
    for method in [*methods, "logreg"]:
        print(
            f"  {method:<8} "
            + "; ".join(
                f"{k}-shot {mean_std(fused, method, k)[0] - max(mean_std(s, method, k)[0] for s in singles):+.1f}"
                for k in shots
            )
        )
    best_any = {k: max((mean_std(s, m, k)[0], s, m) for s in singles for m in methods) for k in shots}
    auto_gap = {k: mean_std(fused, "auto", k)[0] - best_any[k][0] for k in shots} if "auto" in methods else {}
    if "auto" not in methods:
        auto_gap = {}
    gap, method, k, best = worst
    auto = ", ".join(f"{k}-shot {g:+.1f}" for k, g in auto_gap.items())
    print(
        f"fused vs best single expert: worst {gap:+.1f} points ({method}, {k}-shot, best single {best}); "
        f"fused auto vs the best single expert's best method: {auto}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
