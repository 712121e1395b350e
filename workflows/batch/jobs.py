"""Batch jobs: submit images in chunks, follow progress, export results, cancel, resume (:class:`Jobs`).

    from workflows.batch import Jobs
    jobs = Jobs()                                    # Settings(): a broker → Celery; none → in-process
    job = jobs.submit(["photos/"], experts=["timm"])             # → job id
    jobs.wait(job); print(jobs.status(job))                     # state, done/failed/total, timing
    jobs.export(job, "features.jsonl")                          # or .parquet (expertbridge[parquet])

With ``EXPERTBRIDGE_BROKER_URL`` set, chunks are Celery tasks on one queue per expert
(``expertbridge.<expert>``), job records live in Redis and features in a shared
:class:`~cache.redis_store.RedisStore`. Without it (the embedded default) the same
calls run the chunks in this process, with records under ``jobs_dir`` and features
in the :class:`~cache.store.DirectoryStore` at ``store_dir``.

The pieces the API is built from have their own modules: :mod:`~workflows.batch.manifest`
(inputs), :mod:`~workflows.batch.chunks` (chunk messages), :mod:`~workflows.batch.status`
(:class:`JobStatus`), :mod:`~workflows.batch.store` (the feature store), :mod:`~workflows.batch.queues`,
:mod:`~workflows.batch.job_ids`, :mod:`~workflows.batch.errors` and :mod:`~workflows.batch.records`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cache.store import FeatureStore
from experts import ConfigError
from workflows.batch.chunks import plan_messages, publish_chunk, settled
from workflows.batch.errors import BatchUnavailableError, JobNotFoundError
from workflows.batch.job_ids import check_job_id, new_job_id
from workflows.batch.kinds import get_task_kind
from workflows.batch.manifest import gather_inputs, read_manifest
from workflows.batch.queues import DEFAULT_REDIS, queue_for, redacted
from workflows.batch.records import (
    DirectoryJobRecords,
    JobRecords,
    RedisJobRecords,
    item_field,
    redis_client,
    redis_errors,
)
from workflows.batch.runner import execute_chunk
from workflows.batch.status import TERMINAL, JobStatus, derive_state
from workflows.batch.store import RetryingStore, batch_store
from workflows.settings import Settings

ProgressCallback = Callable[[int, int, int], None]  # (done, failed, total)


class Jobs:
    """Submit, follow, export and cancel batch jobs, queued (Celery) or in-process (embedded)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self._records: JobRecords | None = None
        self._store: FeatureStore | None = None

    @property
    def embedded(self) -> bool:
        return not self.settings.broker_url

    @property
    def redis_url(self) -> str:
        return self.settings.broker_url or DEFAULT_REDIS

    @property
    def records(self) -> JobRecords:
        if self._records is None:
            if self.embedded:
                self._records = DirectoryJobRecords(self.settings.jobs_dir)
            else:
                self._records = RedisJobRecords(redis_client(self.redis_url), ttl=self.settings.job_ttl_days * 86400)
        return self._records

    @property
    def store(self) -> FeatureStore:
        if self._store is None:
            self._store = batch_store(self.settings)
        return self._store

    def _checked(self, fn: Callable[[], Any]) -> Any:
        """Run a Redis call; "Redis is away" becomes one clear error."""
        try:
            return fn()
        except redis_errors() as err:
            raise BatchUnavailableError(
                f"cannot reach Redis at {redacted(self.redis_url)} ({type(err).__name__}: {err}). Start it "
                "(e.g. `docker compose up -d redis`) or unset EXPERTBRIDGE_BROKER_URL to run jobs in-process."
            ) from err

    def _meta(self, job_id: str) -> dict[str, Any]:
        meta = self._checked(lambda: self.records.meta(job_id))
        if meta is None:
            where = self.settings.jobs_dir if self.embedded else redacted(self.redis_url)
            raise JobNotFoundError(f"no job {job_id!r} in {where} (never submitted there, or expired)")
        return meta

    # ------------------------------------------------------------------ submit

    def submit(
        self,
        inputs: Iterable[str | Path] | None = None,
        *,
        manifest: str | Path | None = None,
        experts: Sequence[str] | None = None,
        task: str = "extract",
        params: Mapping[str, Any] | None = None,
        chunk_size: int | None = None,
        job_id: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> str:
        """Start a job over images (files, directories, a manifest); returns its id.

        Queued mode returns once every chunk is enqueued; embedded mode runs the chunks
        here and returns when they are done. Re-submitting an existing ``job_id`` with the
        same request resumes it: only chunks with an item not yet recorded, or failed for a
        retryable reason (:data:`~workflows.batch.runner.RETRYABLE_REASONS`: worker lost, expert
        unavailable, …), run again, and they find everything already computed in the feature
        store. An item that failed for its own reason (a corrupt or missing file) is final, so
        resubmitting a finished job is a no-op that leaves its record (state, timing) as it is.
        """
        kind = get_task_kind(task)
        sources = gather_inputs(inputs, manifest)
        if not sources:
            raise ConfigError("no inputs: give image files, directories or a manifest")
        experts = list(experts) if experts else (["timm"] if task == "extract" else [])
        params = dict(params or {})
        if task == "classify" and params.get("model"):
            params["model"] = str(Path(params["model"]).expanduser().absolute())
        if task == "reason" and experts:
            params["experts"] = experts
        lanes = kind.plan(experts, params, self.settings)
        chunk_size = int(chunk_size or self.settings.batch_chunk_size)
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
        spec = {
            "task": task,
            "lanes": [[lane.name, queue_for(lane.route, self.settings)] for lane in lanes],
            "params": params,
            "chunk_size": chunk_size,
            "n_inputs": len(sources),
            # os.fsencode: a file name that is not valid UTF-8 hashes as its bytes instead of raising
            "inputs_sha256": hashlib.sha256(b"\n".join(map(os.fsencode, sources))).hexdigest(),
        }
        job_id = new_job_id() if job_id is None else check_job_id(job_id)

        if not self.embedded:
            self._checked(self.records.ping)  # type: ignore[attr-defined]
        existing = self._checked(lambda: self.records.meta(job_id))
        per_lane = -(-len(sources) // chunk_size)
        if existing is not None:
            mismatch = [k for k in spec if existing.get(k) != spec[k]]
            if mismatch:
                raise ConfigError(f"job {job_id!r} exists with a different {', '.join(mismatch)}; use another id")
            rows = self._checked(lambda: self.records.rows(job_id))
            meta = existing
        else:
            rows = {}
            meta = {
                **spec,
                "id": job_id,
                "mode": "embedded" if self.embedded else "celery",
                "total": len(sources) * len(lanes),
                "n_chunks": per_lane * len(lanes),
                "created_at": time.time(),
                "state": "submitting",
            }
            self._checked(lambda: self.records.create(job_id, meta, sources))
        messages = [m for m in plan_messages(job_id, meta, sources) if not settled(m, rows)]
        if existing is not None and not messages:  # nothing left to do: the record stays as it is
            if existing.get("state") in ("cancelled", "submitting"):  # ... except that it is no longer stopped
                self._checked(lambda: self.records.set_meta(job_id, state="queued"))
            return job_id
        if existing is not None:  # resume: the chunks to run again count as pending until they are recorded anew
            reopened = {m["chunk"]: [item_field(m["lane"], i) for i, _ in m["items"]] for m in messages}
            self._checked(lambda: self.records.reopen(job_id, reopened))
            self._checked(lambda: self.records.set_meta(job_id, state="queued", resumed_at=time.time()))
        if self.embedded:
            self.records.set_meta(job_id, state="queued")
            self._run_here(messages, meta, progress)
        else:
            self._publish(job_id, messages, created=existing is None)
            self._checked(lambda: self.records.set_meta(job_id, state="queued"))
        return job_id

    def _publish(self, job_id: str, messages: list[dict], *, created: bool) -> None:
        from kombu.exceptions import OperationalError

        from workflows.celery_app import app_for

        app = app_for(self.settings)
        try:
            with app.producer_or_acquire() as producer:
                for m in messages:
                    publish_chunk(app, m, producer=producer)
        except (OperationalError, OSError, *redis_errors()) as err:
            if created:
                try:  # nothing half-written: a job whose chunks were not all queued is removed
                    self.records.delete(job_id)
                except Exception:  # noqa: BLE001 - Redis itself is gone: the record stays 'submitting'
                    pass
            raise BatchUnavailableError(
                f"could not queue job {job_id} on {redacted(self.redis_url)} ({type(err).__name__}: {err}); "
                "nothing was submitted" + ("" if created else f"; resubmit with --job-id {job_id} to resume")
            ) from err

    def _run_here(self, messages: list[dict], meta: Mapping[str, Any], progress: ProgressCallback | None) -> None:
        for m in messages:
            summary = execute_chunk(m, records=self.records, store=self.store, settings=self.settings)
            if summary.get("skipped") == "cancelled":
                break
            if progress is not None:
                done, failed = self.records.counts(m["job"])
                progress(done, failed, int(meta["total"]))

    # ------------------------------------------------------------------ follow

    def status(self, job_id: str, *, errors: int = 20) -> JobStatus:
        meta = self._meta(job_id)
        done, failed = self._checked(lambda: self.records.counts(job_id))
        state = derive_state(meta, done, failed)
        sample = self._checked(lambda: self.records.error_rows(job_id, errors)) if failed and errors else {}
        waiting = {}
        if (
            meta.get("mode") == "celery"
            and state in ("queued", "running")
            and isinstance(self.records, RedisJobRecords)
        ):
            waiting = self._checked(lambda: self.records.queue_lengths(sorted({q for _, q in meta["lanes"]})))
        return JobStatus(
            id=job_id,
            task=meta["task"],
            mode=meta.get("mode", "celery"),
            state=state,
            total=int(meta["total"]),
            done=done,
            failed=failed,
            n_chunks=int(meta["n_chunks"]),
            lanes=[lane for lane, _ in meta["lanes"]],
            created_at=meta["created_at"],
            started_at=meta.get("started_at"),
            finished_at=(meta.get("finished_at") or meta.get("cancelled_at")) if state in TERMINAL else None,
            deliveries=int(meta.get("deliveries") or 0),
            error=meta.get("error"),
            errors=sample,
            waiting=waiting,
        )

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll: float = 0.5,
        on_update: Callable[[JobStatus], None] | None = None,
    ) -> JobStatus:
        """Poll until the job is completed, failed or cancelled (``TimeoutError`` after ``timeout`` s)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status(job_id, errors=0)
            if on_update is not None:
                on_update(st)
            if st.finished:
                return self.status(job_id)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not finished after {timeout}s: {st}")
            time.sleep(poll)

    def cancel(self, job_id: str) -> JobStatus:
        """Stop a job: chunks not yet started are skipped (a running chunk finishes). Resubmit to resume."""
        self._meta(job_id)
        self._checked(lambda: self.records.set_meta(job_id, state="cancelled", cancelled_at=time.time()))
        return self.status(job_id)

    def list_jobs(self) -> list[JobStatus]:
        return [self.status(j, errors=0) for j in self._checked(self.records.list_jobs) if self.records.meta(j)]

    def chunks(self, job_id: str) -> dict[int, dict]:
        """Per chunk: deliveries, last run's seconds, hits, misses, worker."""
        self._meta(job_id)
        return self._checked(lambda: self.records.chunk_infos(job_id))

    # ------------------------------------------------------------------ results

    def results(self, job_id: str, *, evidence: bool = False) -> list[dict]:
        """One row per (item, lane) done so far, by index then lane: store key or result, error, reason.

        ``evidence=True`` adds each extracted item's evidence read back from the store (vectors, boxes).
        """
        meta = self._meta(job_id)
        order = {lane: n for n, (lane, _) in enumerate(meta["lanes"])}
        rows = list(self._checked(lambda: self.records.rows(job_id)).values())
        rows.sort(key=lambda r: (int(r["index"]), order.get(r.get("expert"), 0)))
        if evidence:
            self._attach_evidence(rows)
        return rows

    def _attach_evidence(self, rows: list[dict]) -> None:
        from experts.evidence import evidence_from_array

        keyed = [r for r in rows if r.get("key")]
        for start in range(0, len(keyed), 512):
            part = keyed[start : start + 512]
            found = self._checked(lambda part=part: self.store.get_many([r["key"] for r in part]))
            for r in part:
                arr = found.get(r["key"])
                r["evidence"] = None if arr is None else evidence_from_array(arr).to_dict()

    def export(self, job_id: str, path: str | Path, *, format: str | None = None, evidence: bool = False) -> int:
        """Write the results as JSONL (always available) or Parquet (needs pyarrow); returns the row count."""
        path = Path(path)
        fmt = (format or ("parquet" if path.suffix.lower() == ".parquet" else "jsonl")).lower()
        if fmt not in ("jsonl", "parquet"):
            raise ConfigError(f"results format must be jsonl or parquet, got {fmt!r}")
        if fmt == "parquet":
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError as err:
                raise ConfigError(
                    'Parquet export needs pyarrow: pip install "expertbridge[parquet]" '
                    "(or export JSONL: --out results.jsonl)"
                ) from err
        rows = self.results(job_id, evidence=evidence)
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "jsonl":
            with path.open("w") as fh:
                for r in rows:
                    fh.write(json.dumps(r) + "\n")
        else:
            columns = list(dict.fromkeys(k for r in rows for k in r))
            pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows]), str(path))
        return len(rows)


# --------------------------------------------------------------------------- module-level shortcuts


def submit(inputs=None, **kwargs) -> str:
    """``Jobs(settings).submit(...)``; pass ``settings=`` to override the environment."""
    settings = kwargs.pop("settings", None)
    return Jobs(settings).submit(inputs, **kwargs)


def status(job_id: str, settings: Settings | None = None) -> JobStatus:
    return Jobs(settings).status(job_id)


def results(job_id: str, settings: Settings | None = None, **kwargs) -> list[dict]:
    return Jobs(settings).results(job_id, **kwargs)


def cancel(job_id: str, settings: Settings | None = None) -> JobStatus:
    return Jobs(settings).cancel(job_id)


# Names that lived here before the split; tests and older code import them from this module
# (and monkeypatch ``publish_chunk`` here, which is why Jobs calls it through this module).
__all__ = [
    "BatchUnavailableError",
    "JobNotFoundError",
    "JobStatus",
    "Jobs",
    "ProgressCallback",
    "RetryingStore",
    "batch_store",
    "cancel",
    "gather_inputs",
    "new_job_id",
    "plan_messages",
    "publish_chunk",
    "queue_for",
    "read_manifest",
    "results",
    "status",
    "submit",
]
