"""Batch jobs over many images: chunks → Celery tasks per expert queue (or in-process) → job records.

    from workflows.batch import Jobs
    jobs = Jobs()
    job = jobs.submit(["photos/"], experts=["timm"])       # task="extract" | "classify" | "reason"
    print(jobs.wait(job)); jobs.export(job, "out.jsonl")

==================  ==================================================================
module              what
==================  ==================================================================
``jobs``            :class:`Jobs`: the API (submit, status, wait, results, export, cancel)
``manifest``        a job's inputs: files, directories, a manifest
``chunks``          the chunk messages: planned, published, settled
``status``          :class:`JobStatus`, a snapshot of one job
``store``           the feature store jobs read and write
``queues``          the Celery queue of each expert or lane
``job_ids``         job ids: made, and checked
``errors``          :class:`BatchUnavailableError`, :class:`JobNotFoundError`
``records/``        job records: the interface, Redis (queued), a directory (embedded)
``kinds``           task kinds (extract, classify, reason) and their lanes
``runner``          one chunk, as a worker runs it
==================  ==================================================================
"""

from workflows.batch.errors import BatchUnavailableError, JobNotFoundError
from workflows.batch.jobs import Jobs, cancel, results, status, submit
from workflows.batch.kinds import TASK_KINDS, ChunkContext, Lane, TaskKind, register_task_kind
from workflows.batch.manifest import read_manifest
from workflows.batch.queues import queue_for
from workflows.batch.status import JobStatus
from workflows.batch.store import batch_store

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
