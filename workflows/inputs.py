"""Turning what a user names on the command line into a list of image inputs."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

#: Suffixes picked up when a directory is given (case-insensitive).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".heic", ".heif"})


def expand_inputs(items: Iterable[str | Path], *, recursive: bool = True) -> list[str]:
    """Files stay as given (even missing or odd ones: the expert reports them per item);
    directories expand to their image files in sorted order; URLs pass through."""
    out: list[str] = []
    for item in items:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            pattern = path.rglob("*") if recursive else path.glob("*")
            out.extend(str(p) for p in sorted(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(text)
    return out
