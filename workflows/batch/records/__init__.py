"""Job records: what a batch job is, and what each of its items came to.

Two implementations of one interface, :class:`JobRecords` (:mod:`.interface`):

* :class:`RedisJobRecords` (:mod:`.redis_records`) — the queued mode; every worker writes
  there (the key layout is in that module);
* :class:`DirectoryJobRecords` (:mod:`.directory_records`) — the embedded (in-process) mode,
  one directory per job.

:mod:`.redis_link` holds the Redis client, the errors that mean "Redis is away" and the
retry loop through them; job ids are :mod:`workflows.batch.job_ids`.

    from workflows.batch.records import DirectoryJobRecords
    records = DirectoryJobRecords("jobs/")
    done, failed = records.counts("20250101-120000-a1b2c3")
"""

from workflows.batch.job_ids import JOB_ID_PATTERN, check_job_id
from workflows.batch.records.directory_records import DirectoryJobRecords
from workflows.batch.records.interface import ChunkStart, JobRecords, item_field
from workflows.batch.records.redis_link import redis_client, redis_errors, retrying
from workflows.batch.records.redis_records import PREFIX, RedisJobRecords

__all__ = [
    "JOB_ID_PATTERN",
    "PREFIX",
    "ChunkStart",
    "DirectoryJobRecords",
    "JobRecords",
    "RedisJobRecords",
    "check_job_id",
    "item_field",
    "redis_client",
    "redis_errors",
    "retrying",
]
