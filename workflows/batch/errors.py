"""The two errors of the batch API: the broker is away, or the job is unknown.

try:
    Jobs().status("no-such-job")
except JobNotFoundError as err:
    print(err)                     # no job 'no-such-job' in ~/.cache/expertbridge/jobs (...)
"""

from __future__ import annotations

from experts import ExpertBridgeError


class BatchUnavailableError(ExpertBridgeError, ConnectionError):
    """The broker / Redis of batch jobs cannot be reached; nothing was submitted."""


class JobNotFoundError(ExpertBridgeError, KeyError):
    """No job with this id (never submitted here, or its record expired)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "job not found"
