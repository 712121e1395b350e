"""The feature store: features stored once, by content-addressed key, and reused.

:class:`FeatureStore` is the interface (batch get/put, hit/miss counts, size,
pruning, listing and export); :class:`DirectoryStore` is the embedded default,
one file per key, and :class:`~cache.redis_store.RedisStore` shares features
between workers. Both hold the checksummed record of :mod:`cache.codec`: a value
that does not verify on read (flipped or missing bytes, bad header, an older
format) is logged, removed and reported as a miss, so the caller recomputes it.

>>> import numpy as np, tempfile
>>> store = DirectoryStore(tempfile.mkdtemp())
>>> store.put_many({"k" * 64: np.ones(4, dtype=np.float32)})
>>> store.get_many(["k" * 64, "m" * 64]).keys(), store.stats.hits, store.stats.misses
(dict_keys(['kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk']), 1, 1)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cache.atomic_write import atomic_write
from cache.codec import STORABLE_DTYPES, DamagedRecordError, decode_record, encode_record

__all__ = ["STORABLE_DTYPES", "DirectoryStore", "FeatureStore", "StoreStats"]

log = logging.getLogger(__name__)


@dataclass
class StoreStats:
    """Counters since the store object was created (or :meth:`reset`)."""

    hits: int = 0
    misses: int = 0  # includes damaged
    writes: int = 0
    damaged: int = 0  # entries that failed verification (each also counted as a miss)

    def reset(self) -> None:
        self.hits = self.misses = self.writes = self.damaged = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class FeatureStore(ABC):
    """Key → array. Keys come from :func:`cache.keys.feature_key`; arrays are stored exactly (no pickle)."""

    #: Check each record's CRC on read. Only bench/store_integrity.py turns it off, to measure its cost.
    _verify_checksum = True

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

    def _decode(self, key: str, blob: bytes) -> np.ndarray | None:
        """The verified array of a stored record, or None (logged, counted) when it is damaged."""
        try:
            return decode_record(key, blob, verify_checksum=self._verify_checksum)
        except DamagedRecordError as err:
            log.warning("%r: entry %s is damaged (%s); treated as a miss and removed", self, key, err)
            with self._lock:
                self.stats.damaged += 1
            return None

    def _prepare(self, value: np.ndarray) -> np.ndarray:
        arr = np.asarray(value)
        if arr.dtype.name not in STORABLE_DTYPES:
            raise TypeError(f"cannot store dtype {arr.dtype}; store one of {sorted(STORABLE_DTYPES)}")
        if self.dtype is not None and arr.dtype.kind == "f":
            arr = arr.astype(self.dtype)
        return np.ascontiguousarray(arr)


class DirectoryStore(FeatureStore):
    """One record file per key under ``root/ab/<key>.ebf`` (format: :mod:`cache.codec`).

    Writes go to a temporary file in the same directory and are renamed into
    place (atomic on POSIX), so concurrent writers and crashes never leave a
    partial entry under a real key; leftover temporaries are removed by :meth:`prune`.
    Readers may race deletes and prunes (other threads or processes): a file that
    vanishes before or while it is read is a miss. ``<key>.npy`` files of the
    format before checksums are never read (a miss, recomputed); :meth:`prune`
    removes them.
    """

    SUFFIX = ".ebf"
    LEGACY_SUFFIX = ".npy"

    def __init__(self, root: str | Path, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.root)!r})"

    def _path(self, key: str, suffix: str = SUFFIX) -> Path:
        if len(key) < 3 or not key.isalnum():
            raise ValueError(f"invalid store key {key!r}")
        return self.root / key[:2] / f"{key}{suffix}"

    def _get_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        out = {}
        for key in dict.fromkeys(keys):
            path = self._path(key)
            try:
                blob = path.read_bytes()
            except FileNotFoundError:
                continue  # never stored, or deleted/pruned meanwhile
            except OSError as err:  # a disk fault, a directory in its place: drop it and recompute
                log.warning("%r: entry %s is unreadable (%s); treated as a miss and removed", self, key, err)
                _unlink(path)
                continue
            value = self._decode(key, blob)
            if value is None:
                _unlink(path)
                continue
            out[key] = value
            try:
                os.utime(path)  # recency for LRU pruning
            except OSError:
                pass  # pruned after we read it, or a read-only store: what we read is still right
        return out

    def _put_many(self, items: Mapping[str, np.ndarray]) -> None:
        for key, value in items.items():
            path = self._path(key)
            path.parent.mkdir(exist_ok=True)
            with atomic_write(path, "wb", fsync=True) as fh:
                fh.write(encode_record(key, value))
            _unlink(self._path(key, self.LEGACY_SUFFIX))  # its pre-checksum entry, if any, is superseded

    def _files(self, suffix: str = SUFFIX) -> Iterator[Path]:
        return (p for p in self.root.glob(f"??/*{suffix}") if not p.name.startswith("."))

    def _entries(self) -> list[tuple[float, int, Path]]:
        """(mtime, size, path) of every entry still there (others may delete while we look)."""
        out = []
        for path in self._files():
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            out.append((st.st_mtime, st.st_size, path))
        return out

    def keys(self) -> Iterator[str]:
        return (p.stem for p in self._files())

    def delete(self, keys: Iterable[str]) -> int:
        n = 0
        for key in keys:
            try:
                self._path(key).unlink()
                n += 1
            except FileNotFoundError:
                pass
        return n

    def nbytes(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def prune(self, *, max_bytes: int | None = None, older_than: float | None = None) -> int:
        for tmp in self.root.glob("??/.tmp-*"):
            try:
                if time.time() - tmp.stat().st_mtime > 3600:  # a crashed writer's leftover
                    tmp.unlink()
            except FileNotFoundError:
                pass  # its writer finished (renamed it) or another prune removed it
        for legacy in self._files(self.LEGACY_SUFFIX):  # unreadable since checksums came in
            _unlink(legacy)
        entries = sorted(self._entries(), key=lambda e: e[0])
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


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # a directory, no permission: leave it; it reads as a miss again next time
        pass
