"""The ``expertbridge`` command line.

expertbridge experts                       # what can run
expertbridge run yolo bus.jpg --weights yolov8n_int8.tflite --draw out/
expertbridge run timm photos/ --out features.jsonl
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from experts import (
    Detections,
    ExpertBridgeError,
    Features,
    RegionCaptions,
    create_expert,
    get_expert_class,
    list_experts,
)
from experts.drawing import draw_boxes
from experts.images import load_image
from workflows.commands import batch as batch_commands
from workflows.commands import bridge as bridge_commands
from workflows.commands import fewshot as fewshot_commands  # noqa: E402
from workflows.commands.ask import ask_cmd
from workflows.inputs import scan_inputs
from workflows.rendering import markup
from workflows.settings import ENV_FILE_VAR, Settings

app = typer.Typer(help="Bridge expert vision models and language models.", no_args_is_help=True, add_completion=False)
app.add_typer(fewshot_commands.app, name="fewshot")
app.add_typer(batch_commands.app, name="batch")
app.command("worker")(batch_commands.worker_cmd)
app.command("ask")(ask_cmd)
app.add_typer(bridge_commands.app, name="bridge")
console = Console(stderr=True)


@app.callback()
def main(
    env_file: Annotated[
        Path | None, typer.Option("--env-file", help="read settings from this .env file (never from the working dir)")
    ] = None,
    trust_pickle: Annotated[
        bool,
        typer.Option("--trust-pickle", help="load pickled weights (YOLO .pt, Ultralytics tags): they can run code"),
    ] = False,
) -> None:
    """Bridge expert vision models and language models."""
    # Both travel as environment variables, so every Settings() of this process and of the
    # workers it starts sees them; a .env file may not grant trust (workflows/settings.py).
    if env_file is not None:
        os.environ[ENV_FILE_VAR] = str(env_file)
    if trust_pickle:
        os.environ["EXPERTBRIDGE_TRUST_PICKLE_WEIGHTS"] = "1"
    try:
        Settings()
    except ExpertBridgeError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON when they parse as JSON (numbers, lists, booleans)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got {pair!r}", param_hint="--set")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _summary(evidence: Any) -> str:
    if isinstance(evidence, Detections):
        counts = Counter(d.label for d in evidence.items)
        return ", ".join(f"{n} {label}" for label, n in counts.most_common()) or "nothing detected"
    if isinstance(evidence, RegionCaptions):
        return "; ".join(r.caption for r in evidence.items[:3]) or "no regions"
    if isinstance(evidence, Features):
        return f"{evidence.dim}-d features"
    return str(getattr(evidence, "text", evidence))[:80]


@app.command("experts")
def experts_cmd() -> None:
    """List the registered experts."""
    table = Table("name", "evidence", "about")
    for name in list_experts():
        cls = get_expert_class(name)
        about = re.sub(r":\w+:`([^`]*)`|``([^`]*)``", lambda m: m.group(1) or m.group(2), (cls.__doc__ or "").strip())
        table.add_row(name, cls.evidence_type.__name__, about.splitlines()[0])
    Console().print(table)


@app.command("run")
def run_cmd(
    expert: Annotated[str, typer.Argument(help="registered expert name (see `expertbridge experts`)")],
    inputs: Annotated[list[str], typer.Argument(help="image files or directories")],
    weights: Annotated[str | None, typer.Option(help="weights: tag, local path, pypi:DIST or hub id")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="expert option key=value, repeatable")] = [],  # noqa: B006
    out: Annotated[Path | None, typer.Option(help="write one JSON line per input here")] = None,
    draw: Annotated[Path | None, typer.Option(help="directory for images with boxes drawn")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N")] = None,
    batch_size: Annotated[int | None, typer.Option(help="images per forward pass")] = None,
) -> None:
    """Run one expert over images; bad inputs are reported per item, the rest still run."""
    settings = Settings()
    kwargs = {**settings.expert_kwargs(expert), **_parse_options(set_)}
    if weights is not None:
        kwargs["weights"] = weights
    if device is not None:
        kwargs["device"] = device
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    try:
        model = create_expert(expert, **kwargs)
        scan = scan_inputs(inputs)
        if note := scan.skipped_note():
            console.print(f"[yellow]warning:[/yellow] {escape(note)}")
        results = model.run(scan.sources, progress=sys.stderr.isatty())
    except ExpertBridgeError as err:
        console.print(f"[red]error:[/red] {markup(err)}")
        raise typer.Exit(2) from err

    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w") as fh:
            for r in results:
                fh.write(json.dumps(r.to_dict()) + "\n")
    if draw is not None:
        draw.mkdir(parents=True, exist_ok=True)
        for r in results:
            if r.ok and isinstance(r.evidence, (Detections, RegionCaptions)):
                target = draw / f"{Path(r.source).stem}_{expert}.png"
                draw_boxes(load_image(r.source).image, r.evidence).save(target)

    table = Table("#", "input", "result")
    for r in results:
        result = markup(_summary(r.evidence)) if r.ok else f"[red]{markup(r.reason)}: {markup(r.error)}[/red]"
        table.add_row(str(r.index), markup(r.source), result)
    Console().print(table)
    failed = sum(not r.ok for r in results)
    console.print(f"{len(results) - failed} ok, {failed} failed" + (f"; results in {markup(out)}" if out else ""))
    if draw is not None:
        console.print(f"drawn boxes in {markup(draw)}/")


if __name__ == "__main__":  # pragma: no cover
    app()
