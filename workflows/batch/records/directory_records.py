"""Job records in a directory: the embedded (in-process) mode, one writer (the submitting process).

``jobs_dir/J/`` holds ``meta.json``, ``inputs.json``, ``chunks/<chunk>.json`` (rows + info,
written atomically), ``attempts/<chunk>`` (deliveries) and a ``cancelled`` marker.

    records = DirectoryJobRecords("~/.cache/expertbridge/jobs")
    records.rows(job_id)                       # "<lane>/<index>" → row
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cache.atomic_write import atomic_write
from workflows.batch.job_ids import JOB_ID_PATTERN, check_job_id
from workflows.batch.records.interface import ChunkStart, JobRecords


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
