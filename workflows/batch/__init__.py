"""Batch jobs over many images: chunks → Celery tasks per expert queue (or in-process) → job records.

    from workflows.batch import Jobs
    jobs = Jobs()
    job = jobs.submit(["photos/"], experts=["timm"])       # task="extract" | "classify" | "reason"
    print(jobs.wait(job)); jobs.export(job, "out.jsonl")

See :mod:`workflows.batch.jobs` (the API), :mod:`workflows.batch.records` (the record
layout), :mod:`workflows.batch.kinds` (task kinds) and :mod:`workflows.batch.runner`
(one chunk, as a worker runs it).
"""

from workflows.batch.jobs import (
    BatchUnavailableError,
    JobNotFoundError,
    Jobs,
    JobStatus,
    batch_store,
    cancel,
    queue_for,
    read_manifest,
    results,
    status,
    submit,
)
from workflows.batch.kinds import TASK_KINDS, ChunkContext, Lane, TaskKind, register_task_kind

__all__ = [
    "TASK_KINDS",
    "BatchUnavailableError",
    "ChunkContext",
    "JobNotFoundError",
    "JobStatus",
    "Jobs",
    "Lane",
    "TaskKind",
    "batch_store",
    "cancel",
    "queue_for",
    "read_manifest",
    "register_task_kind",
    "results",
    "status",
    "submit",
]
