"""Job records: what a batch job is, and what each of its items came to.

Two implementations of one interface, :class:`JobRecords`:

* :class:`RedisJobRecords` — the queued mode; every worker writes here. Keys, for job ``J``
  (prefix ``expertbridge:job:J``)::

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

* :class:`DirectoryJobRecords` — the embedded (in-process) mode: ``jobs_dir/J/`` with
  ``meta.json``, ``inputs.json``, ``chunks/<chunk>.json`` (rows + info, written
  atomically), ``attempts/<chunk>`` and a ``cancelled`` marker.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cache.atomic_write import atomic_write
from experts import ConfigError

T = TypeVar("T")

PREFIX = "expertbridge"

#: A job id is what :func:`~workflows.batch.jobs.new_job_id` makes (``20250101-120000-a1b2c3``) or a
#: name the user gives (``--job-id``): 1-64 letters, digits, ``.``, ``_`` or ``-``, starting with a
#: letter or digit. It names a directory (embedded) or Redis keys (queued), so it can never be a path
#: (``/``, ``..``) or hold a key separator (``:``).
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_job_id(job_id: str) -> str:
    """``job_id`` if it matches :data:`JOB_ID_PATTERN`, else a :class:`~experts.ConfigError` saying what is allowed."""
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
        raise ConfigError(
            f"invalid job id {job_id!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return job_id


def item_field(lane: str, index: int) -> str:
    return f"{lane}/{index}"


@dataclass(frozen=True)
class ChunkStart:
    """What a worker learns when it starts a chunk."""

    meta: dict[str, Any] | None  # None: the job is unknown (expired or never created)
    attempt: int  # 1 on first delivery
    recorded: dict[str, dict]  # rows already recorded for this chunk's items


class JobRecords(ABC):
    """Where job specs, progress and per-item results live."""

    @abstractmethod
    def create(self, job_id: str, meta: Mapping[str, Any], inputs: Sequence[str]) -> None:
        """Write a new job (all of it or nothing)."""

    @abstractmethod
    def delete(self, job_id: str) -> None: ...

    @abstractmethod
    def meta(self, job_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def set_meta(self, job_id: str, **fields: Any) -> None: ...

    @abstractmethod
    def inputs(self, job_id: str) -> list[str]: ...

    @abstractmethod
    def begin_chunk(self, job_id: str, chunk: int, fields: Sequence[str], worker: str = "") -> ChunkStart: ...

    @abstractmethod
    def finish_chunk(
        self, job_id: str, chunk: int, rows: Mapping[str, dict], info: Mapping[str, Any], total: int, error: str | None
    ) -> tuple[int, int]:
        """Record a chunk's rows (idempotent); returns the job's (done, failed) item counts."""

    @abstractmethod
    def reopen(self, job_id: str, chunks: Mapping[int, Sequence[str]]) -> None:
        """Forget the rows of chunks about to run again (a resume), so progress counts them as pending."""

    @abstractmethod
    def counts(self, job_id: str) -> tuple[int, int]: ...

    @abstractmethod
    def rows(self, job_id: str) -> dict[str, dict]: ...

    @abstractmethod
    def chunk_infos(self, job_id: str) -> dict[int, dict]: ...

    def error_rows(self, job_id: str, limit: int = 20) -> dict[str, dict]:
        """Up to ``limit`` failed items: field → {source, error, reason}."""
        out = {}
        for f, row in self.rows(job_id).items():
            if not row.get("ok"):
                out[f] = {"source": row.get("source"), "error": row.get("error"), "reason": row.get("reason")}
                if len(out) >= limit:
                    break
        return out

    @abstractmethod
    def list_jobs(self) -> list[str]: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


# --------------------------------------------------------------------------- Redis


def redis_errors() -> tuple[type[BaseException], ...]:
    """Errors meaning "Redis is away" (retried, then the task is redelivered), not "bad data"."""
    import redis

    return (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.ReadOnlyError)


def retrying(fn: Callable[[], T], seconds: float) -> T:
    """Call ``fn``, retrying while Redis is unreachable for up to ``seconds``.

    ``fn`` may be several commands (a read, then a transaction): the whole of it runs again.
    redis-py's :class:`~redis.retry.Retry` does the loop and the backoff (0.2 s doubling up to
    2 s). It counts retries, but ``redis_retry_seconds`` is a time budget that includes the
    attempts themselves (an unreachable host takes the connect timeout each time), so the
    failure hook ends it when the next wait would pass the deadline.
    """
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    backoff = ExponentialBackoff(cap=2.0, base=0.1)  # compute(n) = min(2, 0.1 * 2**n): 0.2, 0.4, 0.8, 1.6, 2, ...
    deadline = time.monotonic() + seconds
    failures = 0

    def give_up_at_deadline(error: Exception) -> None:
        nonlocal failures
        failures += 1  # counted here: redis-py < 6 does not pass the count to the hook
        if time.monotonic() + backoff.compute(failures) > deadline:
            raise error

    return Retry(backoff, retries=-1, supported_errors=redis_errors()).call_with_retry(fn, give_up_at_deadline)


def redis_client(url: str, *, connect_timeout: float = 3.0):
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=connect_timeout, socket_timeout=30, socket_keepalive=True)


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


# --------------------------------------------------------------------------- directory


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as fh:
        json.dump(value, fh)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


class DirectoryJobRecords(JobRecords):
    """Records of in-process jobs, one directory per job (single writer: the submitting process)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def _dir(self, job_id: str) -> Path:
        return self.root / check_job_id(job_id)  # never a path outside root

    def create(self, job_id: str, meta: Mapping[str, Any], inputs: Sequence[str]) -> None:
        self.delete(job_id)
        staging = Path(tempfile.mkdtemp(dir=self._ensure_root(), prefix=f".new-{job_id}-"))
        _write_json(staging / "inputs.json", list(inputs))
        _write_json(staging / "meta.json", dict(meta))
        os.replace(staging, self._dir(job_id))  # the job appears whole or not at all

    def _ensure_root(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root

    def delete(self, job_id: str) -> None:
        import shutil

        shutil.rmtree(self._dir(job_id), ignore_errors=True)

    def meta(self, job_id: str) -> dict[str, Any] | None:
        meta = _read_json(self._dir(job_id) / "meta.json")
        if meta is None:
            return None
        if (self._dir(job_id) / "cancelled").exists():
            meta["state"] = "cancelled"
        attempts = self._dir(job_id) / "attempts"
        meta["deliveries"] = sum(int(p.read_text() or 0) for p in attempts.glob("*")) if attempts.is_dir() else 0
        return meta

    def set_meta(self, job_id: str, **fields: Any) -> None:
        path = self._dir(job_id) / "meta.json"
        meta = _read_json(path) or {}
        if fields.get("state") == "cancelled":
            (self._dir(job_id) / "cancelled").touch()
        elif "state" in fields:
            (self._dir(job_id) / "cancelled").unlink(missing_ok=True)
        meta.update(fields)
        _write_json(path, meta)

    def inputs(self, job_id: str) -> list[str]:
        return _read_json(self._dir(job_id) / "inputs.json") or []

    def begin_chunk(self, job_id: str, chunk: int, fields: Sequence[str], worker: str = "") -> ChunkStart:
        meta = self.meta(job_id)
        if meta is None or meta.get("state") == "cancelled":
            return ChunkStart(meta, 0, {})
        counter = self._dir(job_id) / "attempts" / str(chunk)
        counter.parent.mkdir(exist_ok=True)
        attempt = int(counter.read_text() or 0) + 1 if counter.exists() else 1
        counter.write_text(str(attempt))
        if meta.get("started_at") is None:
            self.set_meta(job_id, started_at=time.time())
        saved = _read_json(self._dir(job_id) / "chunks" / f"{chunk}.json") or {"rows": {}}
        return ChunkStart(meta, attempt, {f: saved["rows"][f] for f in fields if f in saved["rows"]})

    def finish_chunk(
        self, job_id: str, chunk: int, rows: Mapping[str, dict], info: Mapping[str, Any], total: int, error: str | None
    ) -> tuple[int, int]:
        _write_json(self._dir(job_id) / "chunks" / f"{chunk}.json", {"rows": dict(rows), "info": dict(info)})
        if error and not (self.meta(job_id) or {}).get("error"):
            self.set_meta(job_id, error=error)
        done, failed = self.counts(job_id)
        if done >= total and not (self.meta(job_id) or {}).get("finished_at"):
            self.set_meta(job_id, finished_at=time.time())
        return done, failed

    def reopen(self, job_id: str, chunks: Mapping[int, Sequence[str]]) -> None:
        for chunk in chunks:
            (self._dir(job_id) / "chunks" / f"{chunk}.json").unlink(missing_ok=True)
        self.set_meta(job_id, finished_at=None, error=None)

    def _chunks(self, job_id: str) -> list[tuple[int, dict]]:
        folder = self._dir(job_id) / "chunks"
        if not folder.is_dir():
            return []
        out = []
        for p in folder.glob("*.json"):
            data = _read_json(p)
            if data is not None:
                out.append((int(p.stem), data))
        return out

    def counts(self, job_id: str) -> tuple[int, int]:
        rows = self.rows(job_id)
        return len(rows), sum(not r.get("ok") for r in rows.values())

    def rows(self, job_id: str) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for _, data in self._chunks(job_id):
            out.update(data["rows"])
        return out

    def chunk_infos(self, job_id: str) -> dict[int, dict]:
        out = {c: dict(data["info"]) for c, data in self._chunks(job_id)}
        attempts = self._dir(job_id) / "attempts"
        if attempts.is_dir():
            for p in attempts.glob("*"):
                out.setdefault(int(p.name), {})["deliveries"] = int(p.read_text() or 0)
        return out

    def list_jobs(self) -> list[str]:
        if not self.root.is_dir():
            return []
        jobs = [p for p in self.root.iterdir() if p.is_dir() and JOB_ID_PATTERN.fullmatch(p.name)]
        return [p.name for p in sorted(jobs, key=lambda p: p.stat().st_mtime)]
