"""A job's status: a snapshot of its progress, and the state derived from its record.

st = jobs.status(job_id)
print(st)                  # job 20250101-120000-a1b2c3 [extract, embedded]: completed, 40/40 done, 3.2s
st.finished, st.succeeded, st.to_dict()
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

TERMINAL = ("completed", "failed", "cancelled")


@dataclass
class JobStatus:
    """A snapshot of one job."""

    id: str
    task: str
    mode: str  # "celery" or "embedded"
    state: str  # submitting | queued | running | completed | failed | cancelled
    total: int
    done: int
    failed: int
    n_chunks: int
    lanes: list[str]
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    deliveries: int = 0
    error: str | None = None
    errors: dict[str, dict] = field(default_factory=dict)  # "<lane>/<index>" → {error, reason} (first 20)
    waiting: dict[str, int] = field(default_factory=dict)  # queue → tasks waiting there

    @property
    def succeeded(self) -> int:
        return self.done - self.failed

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    @property
    def elapsed(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "succeeded": self.succeeded, "elapsed": self.elapsed}

    def __str__(self) -> str:
        line = f"job {self.id} [{self.task}, {self.mode}]: {self.state}, {self.done}/{self.total} done"
        if self.failed:
            line += f", {self.failed} failed"
        if self.elapsed is not None:
            line += f", {self.elapsed:.1f}s"
        return line


def derive_state(meta: Mapping[str, Any], done: int, failed: int) -> str:
    state = meta.get("state", "queued")
    if state in ("cancelled", "submitting"):
        return state
    total = int(meta["total"])
    if done >= total:
        return "failed" if failed >= total else "completed"
    return "running" if done or meta.get("started_at") else "queued"
