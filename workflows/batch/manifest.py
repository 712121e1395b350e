"""A job's inputs: files and directories, plus a manifest (``.txt``, ``.jsonl`` or ``.csv``) listing more.

read_manifest("photos.csv")                 # the 'path' column, relative to the manifest's directory
gather_inputs(["photos/"], "extra.txt")     # expanded, absolute: workers may run elsewhere
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from experts import ConfigError
from workflows.inputs import expand_inputs


def read_manifest(path: str | Path) -> list[str]:
    """Inputs listed in a manifest: ``.txt`` (one per line, ``#`` comments), ``.jsonl`` (a ``path`` field)
    or ``.csv`` (a ``path`` column). Relative paths are relative to the manifest's directory."""
    import csv

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"manifest {path} does not exist")
    base = path.resolve().parent
    entries: list[str] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                obj = json.loads(line)
                value = obj.get("path") or obj.get("source") or obj.get("image") if isinstance(obj, dict) else obj
                if not value:
                    raise ConfigError(f"{path}:{n}: expected a JSON object with a 'path' field")
                entries.append(str(value))
    elif path.suffix.lower() == ".csv":
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            column = next((c for c in ("path", "source", "image", "file") if c in (reader.fieldnames or [])), None)
            if column is None:
                raise ConfigError(f"{path}: the CSV needs a 'path' column, has {reader.fieldnames}")
            entries = [row[column] for row in reader if row[column]]
    else:
        entries = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return [e if "://" in e or Path(e).is_absolute() else os.path.normpath(base / e) for e in entries]


def gather_inputs(inputs: Iterable[str | Path] | None, manifest: str | Path | None) -> list[str]:
    """Files and directories (expanded) plus a manifest; local paths made absolute, since workers
    may run elsewhere. Missing files stay in the list and fail as items (reason ``missing``)."""
    sources = expand_inputs(list(inputs or []))
    if manifest is not None:
        sources += expand_inputs(read_manifest(manifest))
    return [s if "://" in s else os.path.abspath(os.path.expanduser(s)) for s in sources]
