"""``expertbridge bridge train|eval|caption``: learnable bridges from a vision expert into a local LM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from experts import ExpertBridgeError  # experts.errors only: cheap
from workflows.commands.root import command_group, console, finish
from workflows.rendering import markup
from workflows.settings import Settings

app = command_group(help="Learnable bridges (projector, Q-Former queries) into a frozen LM.")

PairsArg = Annotated[Path, typer.Argument(help="image-caption pairs: JSONL {image, text} or CSV image,text")]


def _fail(err: Exception):
    console.print(f"[red]error:[/red] {markup(err)}")
    raise typer.Exit(2) from err


@app.command("train")
def train_cmd(
    pairs: PairsArg,
    out: Annotated[Path, typer.Option(help="directory for the trained bridge")],
    kind: Annotated[str, typer.Option(help="linear, mlp or query")] = "mlp",
    expert: Annotated[str, typer.Option(help="feature expert (weights from settings)")] = "timm",
    lm: Annotated[str, typer.Option(help="local LM: local (SmolLM2-135M), local:PATH or local:HUB_ID")] = "local",
    tokens: Annotated[int, typer.Option(help="soft tokens (linear/mlp) or queries (query)")] = 4,
    epochs: int = 20,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    val: Annotated[Path | None, typer.Option(help="validation pairs (eval loss each epoch)")] = None,
    resume: Annotated[bool, typer.Option(help="continue from OUT/checkpoints if present")] = False,
) -> None:
    """Stage-1 alignment: train only the bridge, features read through the feature store."""
    from cache.store import DirectoryStore
    from experts import create_expert
    from workflows.bridging import BridgeJob, read_pairs

    settings = Settings()
    size = {"num_queries": tokens} if kind == "query" else {"num_tokens": tokens}
    try:
        job = BridgeJob.create(
            create_expert(expert, **settings.expert_kwargs(expert)),
            lm=lm,
            kind=kind,
            store=DirectoryStore(settings.store_dir),
            **size,
        )
        result = job.train(
            read_pairs(pairs),
            val=read_pairs(val) if val else (),
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            checkpoint_dir=out / "checkpoints",
            resume=resume,
            progress=True,
        )
        job.save(out)
    except ExpertBridgeError as err:
        _fail(err)
    first, last = result.history[0], result.history[-1]
    console.print(
        f"train loss {first['train_loss']:.3f} → {last['train_loss']:.3f} over {len(result.history)} epochs"
        + (f", val {last['val_loss']:.3f}" if last.get("val_loss") is not None else "")
        + (f"; left out {len(job.dropped)} unreadable images" if job.dropped else "")
        + f"; saved to {markup(out)}/"
    )
    (out / "history.json").write_text(json.dumps(result.history, indent=2))


@app.command("eval")
def eval_cmd(model: Annotated[Path, typer.Argument(help="directory written by `bridge train`")], pairs: PairsArg):
    """Mean caption loss of a trained bridge on image–caption pairs."""
    from cache.store import DirectoryStore
    from workflows.bridging import BridgeJob, read_pairs

    try:
        settings = Settings()
        job = BridgeJob.load(model, store=DirectoryStore(settings.store_dir), settings=settings)
        loss = job.eval_loss(read_pairs(pairs))
    except ExpertBridgeError as err:
        _fail(err)
    typer.echo(f"caption loss {loss:.4f}")


@app.command("caption")
def caption_cmd(
    model: Annotated[Path, typer.Argument(help="directory written by `bridge train`")],
    images: Annotated[list[str], typer.Argument(help="image files or directories")],
    max_new_tokens: int = 32,
    out: Annotated[Path | None, typer.Option(help="write one JSON line per image here")] = None,
) -> None:
    """Caption images with a trained bridge (greedy decoding from the image features)."""
    from cache.store import DirectoryStore
    from workflows.bridging import BridgeJob
    from workflows.inputs import expand_inputs

    try:
        settings = Settings()
        job = BridgeJob.load(model, store=DirectoryStore(settings.store_dir), settings=settings)
        rows = job.caption(expand_inputs(images), max_new_tokens=max_new_tokens)
    except ExpertBridgeError as err:
        _fail(err)
    if out:
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = Table("image", "caption")
    for r in rows:
        caption = markup(r["caption"]) if r.get("caption") else f"[red]{markup(r.get('error'))}[/red]"
        table.add_row(markup(r["image"]), caption)
    Console().print(table)
    failed = sum("error" in r for r in rows)
    finish(len(rows) - failed, failed)
