"""TESTS ONLY: the batch Celery app, with every chunk slowed down so that a test can kill its worker mid-chunk.

The fault tests of tests/test_batch.py start ``celery -A fault_worker worker ...`` (with this folder on
``PYTHONPATH``) instead of ``-A workflows.celery_app``: the same app, tasks and worker start-up, plus one
thing production code does not have: before a chunk computes, it sleeps ``FAULT_WORKER_ITEM_SLEEP`` seconds
per item. The chunk is already recorded as started (its delivery counted) when the sleep begins.
"""

from __future__ import annotations

import dataclasses
import os
import time

from workflows.batch import runner
from workflows.celery_app import app

ITEM_SLEEP = float(os.environ.get("FAULT_WORKER_ITEM_SLEEP", "0"))
_get_task_kind = runner.get_task_kind


def _slow_task_kind(name: str):
    kind = _get_task_kind(name)

    def run(ctx):
        time.sleep(ITEM_SLEEP * len(ctx.items))
        return kind.run(ctx)

    return dataclasses.replace(kind, run=run)


# Set in the worker's main process, before the pool forks: every pool process inherits it.
runner.get_task_kind = _slow_task_kind

__all__ = ["app"]
