"""Job records in Redis: the queued mode, where every worker writes.

Keys, for job ``J`` (prefix ``expertbridge:job:J``)::

    …:meta      hash   spec and lifecycle: task, lanes, params, total, n_chunks, chunk_size,
                       state (submitting | queued | cancelled), created/started/finished_at,
                       deliveries (chunk runs, counting redeliveries), error (first job-level error)
    …:inputs    list   the input paths, in order (index = position)
    …:items     hash   "<lane>/<index>" → JSON row (store key or result, error, reason)
    …:errors    hash   "<lane>/<index>" → JSON {error, reason}, only for items that failed
    …:chunks    hash   "<chunk>" → JSON {attempt, seconds, hits, misses, worker, finished_at}
    …:attempts  hash   "<chunk>" → deliveries of that chunk
    …:started   hash   "<chunk>" → JSON {at, worker} of its latest delivery
    expertbridge:jobs  zset  job id → created_at (for ``batch list``)

Progress is ``HLEN items`` (done) and ``HLEN errors`` (failed). A chunk's rows are
written in one MULTI/EXEC, and ``HSET`` of the same field twice is a no-op in
count, so a chunk that runs twice (at-least-once delivery) counts once.

    records = RedisJobRecords.from_url("redis://127.0.0.1:6379/0", retry_seconds=30)
    records.counts(job_id)                     # (done, failed)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from workflows.batch.job_ids import JOB_ID_PATTERN, check_job_id
from workflows.batch.records.interface import ChunkStart, JobRecords
from workflows.batch.records.redis_link import redis_client, retrying

T = TypeVar("T")

PREFIX = "expertbridge"


class RedisJobRecords(JobRecords):
    def __init__(self, client, *, ttl: int = 30 * 86400, retry_seconds: float = 0.0) -> None:
        self.client = client
        self.ttl = ttl
        self.retry_seconds = retry_seconds

    @classmethod
    def from_url(cls, url: str, **kwargs) -> RedisJobRecords:
        return cls(redis_client(url), **kwargs)

    def _k(self, job_id: str, part: str) -> str:
        return f"{PREFIX}:job:{check_job_id(job_id)}:{part}"

    def _all_keys(self, job_id: str) -> list[str]:
        return [self._k(job_id, p) for p in ("meta", "inputs", "items", "errors", "chunks", "attempts", "started")]

    def _retry(self, fn: Callable[[], T]) -> T:
        return retrying(fn, self.retry_seconds)

    def ping(self) -> None:
        self.client.ping()

    def create(self, job_id: str, meta: Mapping[str, Any], inputs: Sequence[str]) -> None:
        def write():
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(*self._all_keys(job_id))
            pipe.hset(self._k(job_id, "meta"), mapping={k: json.dumps(v) for k, v in meta.items()})
            for start in range(0, len(inputs), 10_000):
                # as file-system bytes: a non-UTF-8 file name (a surrogate-escaped str) is stored, not refused
                pipe.rpush(self._k(job_id, "inputs"), *map(os.fsencode, inputs[start : start + 10_000]))
            for key in self._all_keys(job_id)[:2]:
                pipe.expire(key, self.ttl)
            pipe.zadd(f"{PREFIX}:jobs", {job_id: float(meta.get("created_at", time.time()))})
            pipe.execute()

        self._retry(write)

    def delete(self, job_id: str) -> None:
        def drop():
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(*self._all_keys(job_id))
            pipe.zrem(f"{PREFIX}:jobs", job_id)
            pipe.execute()

        self._retry(drop)

    def meta(self, job_id: str) -> dict[str, Any] | None:
        raw = self._retry(lambda: self.client.hgetall(self._k(job_id, "meta")))
        return _decode_meta(raw) if raw else None

    def set_meta(self, job_id: str, **fields: Any) -> None:
        key = self._k(job_id, "meta")

        def write():
            pipe = self.client.pipeline(transaction=True)
            present = {k: json.dumps(v) for k, v in fields.items() if v is not None}
            if present:
                pipe.hset(key, mapping=present)
            absent = [k for k, v in fields.items() if v is None]
            if absent:
                pipe.hdel(key, *absent)
            for k in self._all_keys(job_id):
                pipe.expire(k, self.ttl)
            pipe.execute()

        self._retry(write)

    def inputs(self, job_id: str) -> list[str]:
        raw = self._retry(lambda: self.client.lrange(self._k(job_id, "inputs"), 0, -1))
        return [os.fsdecode(r) for r in raw]

    def begin_chunk(self, job_id: str, chunk: int, fields: Sequence[str], worker: str = "") -> ChunkStart:
        def run():
            raw = self.client.hgetall(self._k(job_id, "meta"))
            if not raw:
                return ChunkStart(None, 0, {})
            meta = _decode_meta(raw)
            if meta.get("state") == "cancelled":
                return ChunkStart(meta, 0, {})  # skipped; not counted as a delivery
            pipe = self.client.pipeline(transaction=True)
            pipe.hincrby(self._k(job_id, "attempts"), str(chunk), 1)
            pipe.hincrby(self._k(job_id, "meta"), "deliveries", 1)
            pipe.hsetnx(self._k(job_id, "meta"), "started_at", json.dumps(time.time()))
            pipe.hset(self._k(job_id, "started"), str(chunk), json.dumps({"at": time.time(), "worker": worker}))
            for part in ("attempts", "started"):
                pipe.expire(self._k(job_id, part), self.ttl)
            if fields:
                pipe.hmget(self._k(job_id, "items"), list(fields))
            out = pipe.execute()
            attempt, found = out[0], (out[-1] if fields else [])
            recorded = {f: json.loads(v) for f, v in zip(fields, found) if v is not None}
            return ChunkStart(meta, int(attempt), recorded)

        return self._retry(run)

    def finish_chunk(
        self, job_id: str, chunk: int, rows: Mapping[str, dict], info: Mapping[str, Any], total: int, error: str | None
    ) -> tuple[int, int]:
        items, errors, meta = self._k(job_id, "items"), self._k(job_id, "errors"), self._k(job_id, "meta")
        ok = [f for f, r in rows.items() if r.get("ok")]
        bad = {
            f: json.dumps({"error": r.get("error"), "reason": r.get("reason")}) for f, r in rows.items() if f not in ok
        }

        def write():
            pipe = self.client.pipeline(transaction=True)
            if rows:
                pipe.hset(items, mapping={f: json.dumps(r) for f, r in rows.items()})
            if ok:
                pipe.hdel(errors, *ok)
            if bad:
                pipe.hset(errors, mapping=bad)
            pipe.hset(self._k(job_id, "chunks"), str(chunk), json.dumps(dict(info)))
            if error:
                pipe.hsetnx(meta, "error", json.dumps(error))
            for key in self._all_keys(job_id):
                pipe.expire(key, self.ttl)
            pipe.hlen(items)
            pipe.hlen(errors)
            out = pipe.execute()
            done, failed = int(out[-2]), int(out[-1])
            if done >= total:
                self.client.hsetnx(meta, "finished_at", json.dumps(time.time()))
            return done, failed

        return self._retry(write)

    def reopen(self, job_id: str, chunks: Mapping[int, Sequence[str]]) -> None:
        fields = [f for fs in chunks.values() for f in fs]
        if not fields:
            return

        def run():
            pipe = self.client.pipeline(transaction=True)
            for start in range(0, len(fields), 10_000):
                pipe.hdel(self._k(job_id, "items"), *fields[start : start + 10_000])
                pipe.hdel(self._k(job_id, "errors"), *fields[start : start + 10_000])
            pipe.hdel(self._k(job_id, "meta"), "finished_at", "error")
            pipe.execute()

        self._retry(run)

    def counts(self, job_id: str) -> tuple[int, int]:
        def run():
            pipe = self.client.pipeline(transaction=False)
            pipe.hlen(self._k(job_id, "items"))
            pipe.hlen(self._k(job_id, "errors"))
            done, failed = pipe.execute()
            return int(done), int(failed)

        return self._retry(run)

    def rows(self, job_id: str) -> dict[str, dict]:
        raw = self._retry(lambda: self.client.hgetall(self._k(job_id, "items")))
        return {f.decode(): json.loads(v) for f, v in raw.items()}

    def chunk_infos(self, job_id: str) -> dict[int, dict]:
        def run():
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(self._k(job_id, "chunks"))
            pipe.hgetall(self._k(job_id, "attempts"))
            pipe.hgetall(self._k(job_id, "started"))
            return pipe.execute()

        infos, attempts, started = self._retry(run)
        out = {int(c): json.loads(v) for c, v in infos.items()}
        for c, n in attempts.items():
            out.setdefault(int(c), {})["deliveries"] = int(n)
        for c, raw in started.items():
            last = json.loads(raw)
            out.setdefault(int(c), {}).update(last_started_at=last["at"], last_worker=last["worker"])
        return out

    def error_rows(self, job_id: str, limit: int = 20) -> dict[str, dict]:
        def run():
            _, found = self.client.hscan(self._k(job_id, "errors"), 0, count=limit)
            fields = [f.decode() for f in found][:limit]
            rows = self.client.hmget(self._k(job_id, "items"), fields) if fields else []
            return fields, rows

        fields, rows = self._retry(run)
        out = {}
        for f, raw in zip(fields, rows):
            row = json.loads(raw) if raw else {}
            out[f] = {"source": row.get("source"), "error": row.get("error"), "reason": row.get("reason")}
        return out

    def list_jobs(self) -> list[str]:
        raw = self._retry(lambda: self.client.zrange(f"{PREFIX}:jobs", 0, -1))
        ids = [j for j in (r.decode("utf-8", "replace") for r in raw) if JOB_ID_PATTERN.fullmatch(j)]
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(self._k(job_id, "meta"))
        alive = self._retry(pipe.execute) if ids else []
        expired = [j for j, ok in zip(ids, alive) if not ok]
        if expired:  # records expire (job_ttl_days); drop them from the index too
            self._retry(lambda: self.client.zrem(f"{PREFIX}:jobs", *expired))
        return [j for j, ok in zip(ids, alive) if ok]

    def queue_lengths(self, queues: Sequence[str]) -> dict[str, int]:
        """Tasks waiting in each Celery queue (Redis transport: one list per queue)."""
        pipe = self.client.pipeline(transaction=False)
        for q in queues:
            pipe.llen(q)
        return {q: int(n) for q, n in zip(queues, self._retry(pipe.execute))}

    def close(self) -> None:
        self.client.close()


def _decode_meta(raw: Mapping[bytes, bytes]) -> dict[str, Any]:
    return {k.decode(): json.loads(v) for k, v in raw.items()}
