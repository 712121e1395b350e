"""Arguments and options several commands share, declared once as Typer ``Annotated`` types.

@app.command("predict")
def predict_cmd(images: ImagesArg, out: JsonLinesOut = None) -> None:
    rows = [...]
    if out:
        write_json_lines(out, rows)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

_IMAGES_HELP = "image files or directories"

#: The images a command runs on (at least one).
ImagesArg = Annotated[list[str], typer.Argument(help=_IMAGES_HELP)]

#: The images a command runs on, when they may come from elsewhere instead (``batch submit --manifest``).
OptionalImagesArg = Annotated[list[str] | None, typer.Argument(help=_IMAGES_HELP)]

#: ``--out``: one JSON line per image (:func:`write_json_lines`).
JsonLinesOut = Annotated[Path | None, typer.Option(help="write one JSON line per image here")]


def write_json_lines(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """``rows`` as JSON lines in ``path`` (its directory is made if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(dict(r)) + "\n" for r in rows))
