"""Running one chunk: the body of the Celery task, and of the in-process (embedded) runner.

    rows = execute_chunk(message, records=..., store=..., settings=...)

A chunk is idempotent: its rows are keyed by (lane, item index) and its features by
content hash, so running it twice writes the same keys and counts once. Item errors
(a corrupt or missing file) become rows; chunk-wide failures (the expert cannot load,
the soft time limit, an unexpected exception) fail the chunk's items with a ``reason``
rather than losing them, so a job always finishes. Only "Redis is away" propagates,
after retrying, so that the task is redelivered instead of recorded as failed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from experts import ConfigError, Expert, WeightsNotFoundError, create_expert
from workflows.batch.kinds import ChunkContext, failed_row, get_task_kind
from workflows.batch.records import JobRecords, item_field, redis_errors
from workflows.settings import Settings

log = logging.getLogger(__name__)

#: Reasons a whole chunk failed that say nothing about its images: the worker died, could not load
#: the expert, ran out of time or hit an unexpected error (and ``reasoning_failed``, an exception in the
#: planner rather than in reading the image). Resubmitting the job runs such items again. Every other
#: failure is the item's own (``missing``, ``truncated``, ``not_an_image``, ``unreadable``, …) and is final:
#: the same bytes would fail the same way.
RETRYABLE_REASONS = frozenset({"worker_lost", "expert_unavailable", "timeout", "task_failed", "reasoning_failed"})

#: Experts loaded in this process (one per name), reused by every chunk.
_EXPERTS: dict[str, Expert] = {}
_EXPERTS_LOCK = threading.Lock()


class ExpertUnavailable(ConfigError):
    """This process cannot build an expert (weights missing, bad settings); ``expert`` names it."""

    def __init__(self, message: str, *, expert: str) -> None:
        super().__init__(message)
        self.expert = expert


def get_expert(name: str, settings: Settings) -> Expert:
    """The process-wide instance of expert ``name``, built from ``settings`` and loaded on first use."""
    expert = _EXPERTS.get(name)
    if expert is not None:
        return expert
    with _EXPERTS_LOCK:
        if name not in _EXPERTS:
            try:
                _EXPERTS[name] = create_expert(name, **settings.expert_kwargs(name)).load()
            except (WeightsNotFoundError, ConfigError) as err:
                raise ExpertUnavailable(f"cannot load expert {name!r}: {err}", expert=name) from err
        return _EXPERTS[name]


def preload(names: list[str], settings: Settings) -> dict[str, str]:
    """Load experts now (a worker process at start); returns name → error for those that failed."""
    failed = {}
    for name in names:
        if name == "reason":
            continue
        try:
            get_expert(name, settings)
            log.info("expertbridge worker %s: expert %r loaded", os.getpid(), name)
        except Exception as err:  # noqa: BLE001 - reported, and again on each chunk that needs it
            failed[name] = str(err)
            log.error("expertbridge worker %s: %s; its chunks will fail as expert_unavailable", os.getpid(), err)
    return failed


def execute_chunk(
    message: Mapping[str, Any],
    *,
    records: JobRecords,
    store: Any,
    settings: Settings,
    worker: str = "",
) -> dict[str, Any]:
    """Run one chunk and record its rows; returns the task's summary (store keys and per-item errors).

    ``worker`` names the Celery worker (``host:pid``); empty means the in-process (embedded) runner.
    """
    job, chunk, lane = message["job"], int(message["chunk"]), message["lane"]
    items = [(int(i), str(src)) for i, src in message["items"]]
    fields = [item_field(lane, i) for i, _ in items]
    worker = worker or "in-process"
    start = records.begin_chunk(job, chunk, fields, worker)
    summary: dict[str, Any] = {"job": job, "chunk": chunk, "lane": lane, "attempt": start.attempt}
    if start.meta is None:
        log.warning("job %s is unknown (expired or deleted); chunk %s skipped", job, chunk)
        return {**summary, "skipped": "unknown job"}
    if start.meta.get("state") == "cancelled":
        return {**summary, "skipped": "cancelled"}
    total = int(start.meta["total"])
    if len(start.recorded) == len(fields) and all(r.get("ok") for r in start.recorded.values()):
        rows = [start.recorded[f] for f in fields]  # a redelivery of a finished chunk: nothing to redo
        return {**summary, **_summarize(rows), "skipped": "already recorded"}

    t0 = time.perf_counter()
    ctx = ChunkContext(lane, message.get("params") or {}, items, settings, store, lambda n: get_expert(n, settings))
    job_error = None
    if start.attempt > settings.batch_max_deliveries:
        msg = f"chunk {chunk} was delivered {start.attempt} times and its worker died each time; not retried again"
        rows = [failed_row(i, s, msg, "worker_lost") for i, s in items]
        job_error = msg
    else:
        try:
            rows = get_task_kind(message["task"]).run(ctx)
            if len(rows) != len(items):
                raise RuntimeError(f"task {message['task']!r} returned {len(rows)} rows for {len(items)} items")
        except redis_errors():
            raise  # Redis is away: let the task be redelivered, never record a false failure
        except ConfigError as err:  # includes ExpertUnavailable
            where = "in-process" if worker == "in-process" else f"worker {worker}"
            job_error = f"{where}: {err}"
            expert = getattr(err, "expert", lane)
            rows = [{**failed_row(i, s, job_error, "expert_unavailable"), "expert": expert} for i, s in items]
        except Exception as err:  # noqa: BLE001 - the chunk's items fail with the cause; the job goes on
            if type(err).__name__ == "SoftTimeLimitExceeded":
                msg, reason = (
                    f"chunk {chunk} exceeded the soft time limit ({settings.task_soft_time_limit}s)",
                    "timeout",
                )
            else:
                log.exception("chunk %s of job %s failed", chunk, job)
                msg, reason = f"{type(err).__name__}: {err}"[:500], "task_failed"
            rows = [failed_row(i, s, msg, reason) for i, s in items]
    seconds = time.perf_counter() - t0
    for row in rows:
        row.setdefault("task", message["task"])
    info = {
        "attempt": start.attempt,
        "seconds": round(seconds, 4),
        "worker": worker,
        "finished_at": time.time(),
        **ctx.stats,
    }
    done, failed = records.finish_chunk(job, chunk, dict(zip(fields, rows)), info, total, job_error)
    return {**summary, **_summarize(rows), **ctx.stats, "seconds": info["seconds"], "done": done, "total": total}


def _summarize(rows: list[dict]) -> dict[str, Any]:
    return {
        "keys": [r["key"] for r in rows if r.get("ok") and r.get("key")],
        "errors": {str(r["index"]): {"error": r.get("error"), "reason": r.get("reason")} for r in rows if not r["ok"]},
    }
