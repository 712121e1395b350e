"""A feature store in Redis, shared by every worker.

Each value is the checksummed record of :mod:`cache.codec` (magic, CRC-32 over key
and record, JSON header with dtype and shape, raw array bytes), never a pickle. A
value that does not verify (flipped bytes, a malformed header, a record from before
checksums) is logged, deleted and reported as a miss: the caller recomputes and
writes it again, so a resubmitted job heals it.

Recency for pruning is kept in a sorted set (key → last access time).

>>> store = RedisStore.from_url("redis://127.0.0.1:6379/0", namespace="demo")  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from cache.codec import encode_record
from cache.store import FeatureStore


class RedisStore(FeatureStore):
    """Features under ``{namespace}:f:<key>``; ``ttl`` seconds (optional) expire idle entries."""

    def __init__(self, client, *, namespace: str = "expertbridge", ttl: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.client = client
        self.namespace = namespace
        self.ttl = ttl
        self._recency = f"{namespace}:recency"

    @classmethod
    def from_url(cls, url: str, **kwargs) -> RedisStore:
        import redis

        return cls(redis.Redis.from_url(url), **kwargs)

    def __repr__(self) -> str:
        return f"RedisStore(namespace={self.namespace!r})"

    def _rkey(self, key: str) -> str:
        return f"{self.namespace}:f:{key}"

    def _get_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        unique = list(dict.fromkeys(keys))
        blobs = self.client.mget([self._rkey(k) for k in unique])
        out, damaged = {}, []
        for key, blob in zip(unique, blobs):
            if blob is None:
                continue
            value = self._decode(key, blob)
            if value is None:
                damaged.append(key)
            else:
                out[key] = value
        if damaged:  # gone until recomputed; a good value another worker wrote meanwhile is only recomputed
            self.delete(damaged)
        if out:
            now = time.time()
            pipe = self.client.pipeline(transaction=False)
            pipe.zadd(self._recency, dict.fromkeys(out, now))
            if self.ttl:
                for key in out:
                    pipe.expire(self._rkey(key), self.ttl)
            pipe.execute()
        return out

    def _put_many(self, items: Mapping[str, np.ndarray]) -> None:
        now = time.time()
        pipe = self.client.pipeline(transaction=True)  # MULTI/EXEC: all of a batch or none of it
        for key, value in items.items():
            pipe.set(self._rkey(key), encode_record(key, value), ex=self.ttl)
        pipe.zadd(self._recency, dict.fromkeys(items, now))
        pipe.execute()

    def keys(self) -> Iterator[str]:
        prefix = f"{self.namespace}:f:"
        for rkey in self.client.scan_iter(match=f"{prefix}*", count=1000):
            yield (rkey.decode() if isinstance(rkey, bytes) else rkey)[len(prefix) :]

    def delete(self, keys: Iterable[str]) -> int:
        keys = list(keys)
        if not keys:
            return 0
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(*[self._rkey(k) for k in keys])
        pipe.zrem(self._recency, *keys)
        return int(pipe.execute()[0])

    def nbytes(self) -> int:
        total = 0
        pipe = self.client.pipeline(transaction=False)
        for key in self.keys():
            pipe.strlen(self._rkey(key))
        for n in pipe.execute():
            total += int(n)
        return total

    def prune(self, *, max_bytes: int | None = None, older_than: float | None = None) -> int:
        removed = 0
        if older_than is not None:
            stale = [k.decode() for k in self.client.zrangebyscore(self._recency, 0, time.time() - older_than)]
            removed += self.delete(stale)
        if max_bytes is not None:
            total = self.nbytes()
            for raw in self.client.zrange(self._recency, 0, -1):  # oldest first
                if total <= max_bytes:
                    break
                key = raw.decode()
                size = self.client.strlen(self._rkey(key))
                removed += self.delete([key])
                total -= size
        return removed

    def clear(self) -> int:
        """Delete every entry of this namespace."""
        removed = self.delete(list(self.keys()))
        self.client.delete(self._recency)
        return removed
