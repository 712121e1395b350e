"""Turning what a user names on the command line into a list of image inputs.

    scan = scan_inputs(["photos/", "extra.jpg"])
    scan.sources           # what to run, in order
    scan.unreadable_dirs   # directories that could not be listed (reported, never silently dropped)

Files stay as given, even missing or odd ones: intake reports each per item.
Directories expand, recursively and in sorted order, to every entry with an
image suffix that is not itself a directory, so a FIFO or a dangling symlink
named ``x.jpg`` becomes an item that fails alone with a clear reason (intake
judges it by ``stat`` alone and never opens it). Symlinked directories are not
followed (no loops). URLs pass through. A directory holding no image at all is a
:class:`~experts.errors.ConfigError` ("no images found in DIR").

A name that is not valid UTF-8 (bytes Python can only carry as lone surrogates,
which crash printing, JSON and Redis) becomes a ``file://`` URI with its bytes
percent-encoded; intake reads it back to the same file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from experts.errors import ConfigError
from experts.sources import is_url, portable_name

log = logging.getLogger(__name__)

#: Suffixes picked up when a directory is given (case-insensitive).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".heic", ".heif"})


@dataclass
class InputScan:
    """What :func:`scan_inputs` found: the sources to run and the directories it could not list."""

    sources: list[str] = field(default_factory=list)
    #: directories (given or found inside one) whose listing failed, e.g. permission denied
    unreadable_dirs: list[str] = field(default_factory=list)

    def skipped_note(self) -> str | None:
        """One line for the user when directories were skipped, else ``None``."""
        n = len(self.unreadable_dirs)
        if not n:
            return None
        shown = ", ".join(self.unreadable_dirs[:3]) + (", ..." if n > 3 else "")
        return f"{n} unreadable director{'y' if n == 1 else 'ies'} skipped: {shown}"


def scan_inputs(items: Iterable[str | os.PathLike], *, recursive: bool = True) -> InputScan:
    """Expand files, directories and URLs into sources; see the module docstring."""
    scan = InputScan()
    for item in items:
        text = os.fsdecode(item)
        if not is_url(text) and os.path.isdir(text):
            _scan_dir(text, recursive, scan)
        else:
            scan.sources.append(portable_name(text))
    return scan


def expand_inputs(items: Iterable[str | os.PathLike], *, recursive: bool = True) -> list[str]:
    """:func:`scan_inputs`' sources; unreadable directories are logged as a warning."""
    scan = scan_inputs(items, recursive=recursive)
    if note := scan.skipped_note():
        log.warning(note)
    return scan.sources


def _scan_dir(root: str, recursive: bool, scan: InputScan) -> None:
    root = str(Path(root))  # "photos/" and "./photos" name their files as "photos/x.jpg"
    found: list[str] = []

    def unreadable(err: OSError) -> None:
        scan.unreadable_dirs.append(portable_name(os.fsdecode(err.filename or root)))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames.sort()
        # A name that is a directory (or a link to one) is walked, never an item; anything
        # else with an image suffix is, whatever it turns out to be.
        found.extend(os.path.join(dirpath, f) for f in filenames if Path(f).suffix.lower() in IMAGE_SUFFIXES)
        if not recursive:
            break
    if not found:  # naming it was a mistake; an empty run reporting "0 ok, 0 failed" would hide it
        unlisted = " (and it could not be listed)" if scan.unreadable_dirs[-1:] == [portable_name(root)] else ""
        raise ConfigError(
            f"no images found in {portable_name(root)}{unlisted} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}"
            f"{', in subdirectories too' if recursive else ''})"
        )
    # Path order (component by component), as pathlib sorts.
    scan.sources.extend(portable_name(p) for p in sorted(found, key=lambda p: Path(p).parts))
