"""The feature store: features stored once, by content-addressed key, and reused.

:class:`FeatureStore` is the interface (batch get/put, hit/miss counts, size,
pruning, listing and export); :class:`DirectoryStore` is the embedded default,
one ``.npy`` file per key, and :class:`~cache.redis_store.RedisStore` shares
features between workers.

>>> import numpy as np, tempfile
>>> store = DirectoryStore(tempfile.mkdtemp())
>>> store.put_many({"k" * 64: np.ones(4, dtype=np.float32)})
>>> store.get_many(["k" * 64, "m" * 64]).keys(), store.stats.hits, store.stats.misses
(dict_keys(['kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk']), 1, 1)
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: dtypes a store accepts; anything else is refused rather than silently cast.
STORABLE_DTYPES = frozenset({"float16", "float32", "float64", "int64", "int32", "uint8", "bool"})


@dataclass
class StoreStats:
    """Counters since the store object was created (or :meth:`reset`)."""

    hits: int = 0
    misses: int = 0
    writes: int = 0

    def reset(self) -> None:
        self.hits = self.misses = self.writes = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class FeatureStore(ABC):
    """Key → array. Keys come from :func:`cache.keys.feature_key`; arrays are stored exactly (no pickle)."""

    def __init__(self, *, dtype: str | None = None) -> None:
        if dtype is not None and dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be float16, float32 or None (keep as given), got {dtype!r}")
        self.dtype = dtype
        self.stats = StoreStats()
        self._lock = threading.Lock()

    # -- what a backend implements
    @abstractmethod
    def _get_many(self, keys: list[str]) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def _put_many(self, items: Mapping[str, np.ndarray]) -> None: ...

    @abstractmethod
    def keys(self) -> Iterator[str]:
        """Every stored key (order unspecified)."""

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> int:
        """Remove keys; returns how many existed."""

    @abstractmethod
    def nbytes(self) -> int:
        """Total bytes held (payloads and headers)."""

    @abstractmethod
    def prune(self, *, max_bytes: int | None = None, older_than: float | None = None) -> int:
        """Evict least recently used entries until under ``max_bytes``, and/or those unused for ``older_than`` s."""

    # -- shared behaviour
    def get_many(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """The stored arrays among ``keys``; missing keys are absent from the result."""
        keys = list(keys)
        found = self._get_many(keys) if keys else {}
        with self._lock:
            self.stats.hits += len(found)
            self.stats.misses += len(set(keys)) - len(found)
        return found

    def put_many(self, items: Mapping[str, np.ndarray]) -> None:
        clean = {k: self._prepare(v) for k, v in items.items()}
        if clean:
            self._put_many(clean)
            with self._lock:
                self.stats.writes += len(clean)

    def get(self, key: str) -> np.ndarray | None:
        return self.get_many([key]).get(key)

    def put(self, key: str, value: np.ndarray) -> None:
        self.put_many({key: value})

    def __contains__(self, key: str) -> bool:
        return key in self._get_many([key])

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())

    def export(self, path: str | Path, keys: Iterable[str] | None = None) -> int:
        """Write entries to one ``.safetensors`` file (key → tensor); returns the count."""
        from safetensors.numpy import save_file

        wanted = list(self.keys()) if keys is None else list(keys)
        arrays = self._get_many(wanted)
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))
        return len(arrays)

    def _prepare(self, value: np.ndarray) -> np.ndarray:
        arr = np.asarray(value)
        if arr.dtype.name not in STORABLE_DTYPES:
            raise TypeError(f"cannot store dtype {arr.dtype}; store one of {sorted(STORABLE_DTYPES)}")
        if self.dtype is not None and arr.dtype.kind == "f":
            arr = arr.astype(self.dtype)
        return np.ascontiguousarray(arr)


class DirectoryStore(FeatureStore):
    """One ``.npy`` file per key under ``root/ab/<key>.npy``.

    Writes go to a temporary file in the same directory and are renamed into
    place (atomic on POSIX), so concurrent writers and crashes never leave a
    partial entry under a real key; leftover temporaries are removed by :meth:`prune`.
    """

    def __init__(self, root: str | Path, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        if len(key) < 3 or not key.isalnum():
            raise ValueError(f"invalid store key {key!r}")
        return self.root / key[:2] / f"{key}.npy"

    def _get_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        out = {}
        for key in dict.fromkeys(keys):
            path = self._path(key)
            try:
                out[key] = np.load(path, allow_pickle=False)
            except FileNotFoundError:
                continue
            except (ValueError, OSError, EOFError):
                path.unlink(missing_ok=True)  # unreadable (disk fault): drop it and recompute
                continue
            os.utime(path)  # recency for LRU pruning
        return out

    def _put_many(self, items: Mapping[str, np.ndarray]) -> None:
        for key, value in items.items():
            path = self._path(key)
            path.parent.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
            try:
                with os.fdopen(fd, "wb") as fh:
                    np.save(fh, value, allow_pickle=False)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def _files(self) -> Iterator[Path]:
        return (p for p in self.root.glob("??/*.npy") if not p.name.startswith("."))

    def keys(self) -> Iterator[str]:
        return (p.stem for p in self._files())

    def delete(self, keys: Iterable[str]) -> int:
        n = 0
        for key in keys:
            path = self._path(key)
            if path.exists():
                path.unlink(missing_ok=True)
                n += 1
        return n

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self._files())

    def prune(self, *, max_bytes: int | None = None, older_than: float | None = None) -> int:
        for tmp in self.root.glob("??/.tmp-*"):
            if time.time() - tmp.stat().st_mtime > 3600:  # a crashed writer's leftover
                tmp.unlink(missing_ok=True)
        entries = sorted(((p.stat().st_mtime, p.stat().st_size, p) for p in self._files()), key=lambda e: e[0])
        removed = 0
        if older_than is not None:
            cutoff = time.time() - older_than
            for mtime, _, path in entries:
                if mtime < cutoff:
                    path.unlink(missing_ok=True)
                    removed += 1
            entries = [e for e in entries if e[0] >= cutoff]
        if max_bytes is not None:
            total = sum(size for _, size, _ in entries)
            for _, size, path in entries:  # oldest first
                if total <= max_bytes:
                    break
                path.unlink(missing_ok=True)
                total -= size
                removed += 1
        return removed
