"""Write a file so that readers see the old content or the new, never a half-written one.

The one tmp-file + ``os.replace`` helper of the project. It lives in ``cache/`` because
that is the lowest package all its users may import (DESIGN.md: ``cache`` imports
nothing of ours, ``agents`` and ``workflows`` may import ``cache``); ``experts`` and
``bridges`` may not import it, so their few writers (weight caches verified by sha256,
checkpoint directory swaps) keep their own.

>>> import tempfile, pathlib
>>> target = pathlib.Path(tempfile.mkdtemp()) / "entry.json"
>>> with atomic_write(target) as fh:
...     _ = fh.write('{"ok": true}')
>>> target.read_text()
'{"ok": true}'
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["TMP_PREFIX", "atomic_write"]

#: Temporary files start with this, so listings that skip dot-files never see them.
TMP_PREFIX = ".tmp-"


@contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "w", *, fsync: bool = False, encoding: str | None = None
) -> Iterator[IO[Any]]:
    """Yield a file open on a temporary file next to ``path``; on a clean exit, it replaces ``path``.

    If the block raises (or the process dies), ``path`` keeps what it held before and
    the temporary file is removed (a killed process may leave a ``.tmp-*`` file, never a
    partial file under ``path``). The temporary file has ``path``'s suffix and
    ``mkstemp``'s permissions (0600). ``mode`` is ``"w"`` (text, UTF-8 unless
    ``encoding`` says otherwise) or ``"wb"``. ``fsync=True`` flushes the data to disk
    before the rename, so a power cut cannot leave a renamed but empty file. The parent
    directory must exist.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "v.bin"
    >>> with atomic_write(target, "wb", fsync=True) as fh:
    ...     _ = fh.write(b"\\x00\\x01")
    >>> target.read_bytes()
    b'\\x00\\x01'
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', not {mode!r}")
    target = Path(path)
    if mode == "w" and encoding is None:
        encoding = "utf-8"  # not the locale's: these files move between machines
    # A unique name in the same directory: concurrent writers never share a temp file,
    # and os.replace within one file system is atomic.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=TMP_PREFIX, suffix=target.suffix)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
