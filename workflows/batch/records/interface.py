"""The job-record interface both modes implement: what a batch job is, and what each of its items came to.

A job's items are addressed per lane (one expert, or one task lane) and input index:
``item_field("timm", 7) == "timm/7"``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


def item_field(lane: str, index: int) -> str:
    """The field an item's row is recorded under: ``"<lane>/<index>"``."""
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
