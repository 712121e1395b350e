"""Turning what a user names on the command line into a list of image inputs."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from experts.errors import ConfigError

#: Suffixes picked up when a directory is given (case-insensitive).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".heic", ".heif"})


def expand_inputs(items: Iterable[str | Path], *, recursive: bool = True) -> list[str]:
    """Files stay as given (even missing or odd ones: the expert reports them per item);
    directories expand to their image files in sorted order; URLs pass through.

    A directory without a single image file is a :class:`ConfigError` ("no images found in DIR"):
    naming it was a mistake, and an empty run that reports "0 ok, 0 failed" would hide it.
    """
    out: list[str] = []
    for item in items:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            pattern = path.rglob("*") if recursive else path.glob("*")
            found = [str(p) for p in sorted(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise ConfigError(
                    f"no images found in {text} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}"
                    f"{', in subdirectories too' if recursive else ''})"
                )
            out.extend(found)
        else:
            out.append(text)
    return out
