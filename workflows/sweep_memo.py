"""Results of few-shot sweep runs, remembered by everything that decides them.

A warm feature store makes a second ``fewshot eval`` encode nothing, but every run is still
fitted again: on DTD-10 that was 12-22 s of a 20-35 s warm sweep (README). A run's result is a
pure function of its features, labels, method, seed and settings, and of the code that fits and
scores it. :class:`SweepMemo` keys each (run, method) result by a digest of all of these, so a
re-run with the same data and code reads it back, and a run whose inputs or code changed (a new
shot count, an edited head, another scikit-learn) misses and is fitted as before.

The digest covers the features' exact bytes (not only their store keys, so an expert that is
not bit-for-bit deterministic misses instead of reusing), the source of every module that fits or
scores a run (:data:`FIT_SOURCES`) and the versions of the numeric libraries under it. Entries are
JSON, written atomically: reading one never runs code. Like the feature store, it catches damage
(an unreadable entry is a miss, refitted and overwritten), not tampering by someone who can write
the directory. ``fewshot eval --refit`` ignores what is remembered.

>>> import tempfile, torch
>>> memo = SweepMemo(tempfile.mkdtemp())
>>> key = memo.run_key({"seed": 0}, {"x": torch.ones(2, 3)})
>>> memo.get(key, "linear") is None
True
>>> memo.put(key, "linear", {"accuracy": 0.5})
>>> memo.get(key, "linear"), memo.hits, memo.misses
({'accuracy': 0.5}, 1, 1)
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cache.atomic_write import atomic_write

__all__ = ["FIT_SOURCES", "SweepMemo", "code_digest"]

log = logging.getLogger(__name__)

#: bump when an entry's layout changes: older entries then miss instead of being misread
MEMO_FORMAT = "expertbridge-sweep-run-1"
#: the code that decides a run's result once its features are given, relative to the repository root:
#: the heads and their searches (all of ``cache/``), the classifier that fits them and the sweep loop
#: with its baselines. Feature extraction is not here: the features' bytes are hashed instead.
FIT_SOURCES = ("cache/*.py", "workflows/fewshot.py", "workflows/fewshot_eval.py", "workflows/sweep_memo.py")
#: libraries whose numerics decide a fit (a new lbfgs or BLAS path can move an accuracy)
FIT_LIBRARIES = ("numpy", "torch", "scikit-learn", "scipy")


#: the directory holding ``cache/`` and ``workflows/`` (the repository, or site-packages when installed)
PACKAGES_ROOT = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=4)
def code_digest(root: Path = PACKAGES_ROOT) -> str:
    """sha256 over the source of :data:`FIT_SOURCES` under ``root`` and the versions of :data:`FIT_LIBRARIES`.

    Editing any fitting or scoring code, or upgrading one of those libraries, changes it, so every
    remembered result misses. (Coarse on purpose: a comment edit in ``cache/`` refits too.)
    """
    digest = hashlib.sha256(MEMO_FORMAT.encode())
    for pattern in FIT_SOURCES:
        for path in sorted(root.glob(pattern)):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    for name in FIT_LIBRARIES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"{name}=={version}\0".encode())
    return digest.hexdigest()


class SweepMemo:
    """Remembered (run, method) results of a sweep, one JSON file each under ``root``.

    :meth:`run_key` digests a run's settings and arrays once; :meth:`get` / :meth:`put` read and
    write one method's result under it. ``refit=True`` never reads (every run is fitted) but still
    writes, so the next run is warm again.
    """

    def __init__(self, root: str | Path, *, refit: bool = False) -> None:
        self.root = Path(root)
        self.refit = refit
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"SweepMemo({str(self.root)!r})"

    def run_key(self, settings: Mapping[str, Any], arrays: Mapping[str, torch.Tensor | np.ndarray]) -> str:
        """Digest of a run: ``settings`` (JSON-able: method-independent options, names, seed) and the
        exact bytes, dtype and shape of each array (features, labels), with :func:`code_digest`."""
        digest = hashlib.blake2b(digest_size=32)
        digest.update(code_digest().encode())
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
        for name in sorted(arrays):
            value = arrays[name]
            array = np.ascontiguousarray(value.numpy() if isinstance(value, torch.Tensor) else value)
            digest.update(f"\0{name}:{array.dtype.str}:{array.shape}\0".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()

    def get(self, run_key: str, method: str) -> dict | None:
        """The result remembered for ``method`` in that run, or ``None`` (a miss: fit it)."""
        if self.refit:
            self.misses += 1
            return None
        path = self._path(run_key, method)
        try:
            entry = json.loads(path.read_text())
            if entry["format"] != MEMO_FORMAT or entry["run"] != run_key or entry["method"] != method:
                raise ValueError("entry is for another run")
            result = entry["result"]
            if not isinstance(result, dict):
                raise ValueError("result is not an object")
        except FileNotFoundError:
            self.misses += 1
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:  # damaged: refit and overwrite
            log.warning("sweep memo entry %s unreadable (%s); refitting", path.name, e)
            self.misses += 1
            return None
        self.hits += 1
        return result

    def put(self, run_key: str, method: str, result: Mapping[str, Any]) -> None:
        """Remember ``result`` (JSON-able) for ``method`` in that run; a failed write only loses the memo."""
        entry = {"format": MEMO_FORMAT, "run": run_key, "method": method, "result": dict(result)}
        path = self._path(run_key, method)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path) as fh:
                fh.write(json.dumps(entry))
        except OSError as e:
            log.warning("could not remember a sweep run in %s: %s", self.root, e)

    def _path(self, run_key: str, method: str) -> Path:
        # the method name is ours (validated before a sweep starts); hashed anyway so no name becomes a path
        name = hashlib.sha256(f"{run_key}\0{method}".encode()).hexdigest()
        return self.root / name[:2] / f"{name}.json"
