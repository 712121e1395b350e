"""Celery tasks. One task does all batch work: run a chunk of a job (see :mod:`workflows.batch`).

The message is JSON — job id, chunk number, task kind, lane, queue, params and
``[index, path]`` items — and so is the return value: the chunk's store keys and
per-item errors, never tensors. Results themselves are in the job record.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from celery.exceptions import Reject

from workflows.batch.records import RedisJobRecords, redis_client, redis_errors
from workflows.batch.runner import execute_chunk
from workflows.batch.store import batch_store
from workflows.celery_app import DEFAULT_BROKER, app
from workflows.settings import Settings

_resources: dict[str, Any] = {}
_lock = threading.Lock()


def worker_resources() -> dict[str, Any]:
    """Settings, job records and feature store of this process (rebuilt after a fork: no shared sockets)."""
    with _lock:
        if _resources.get("pid") != os.getpid():
            settings = Settings()
            _resources.update(
                pid=os.getpid(),
                settings=settings,
                records=RedisJobRecords(
                    redis_client(settings.broker_url or DEFAULT_BROKER),
                    ttl=settings.job_ttl_days * 86400,
                    retry_seconds=settings.redis_retry_seconds,
                ),
                store=batch_store(settings, retry_seconds=settings.redis_retry_seconds),
            )
        return _resources


@app.task(name="expertbridge.run_chunk", bind=True)
def run_chunk(self, message: dict) -> dict:
    """Read a chunk's images, answer from the store, compute the misses, write the store and the job record."""
    res = worker_resources()
    try:
        return execute_chunk(
            message,
            records=res["records"],
            store=res["store"],
            settings=res["settings"],
            worker=f"{self.request.hostname}:{os.getpid()}",
        )
    except redis_errors() as err:
        # Redis stayed away longer than redis_retry_seconds: hand the chunk back rather than lose it.
        raise Reject(f"Redis unavailable: {err}", requeue=True) from err
