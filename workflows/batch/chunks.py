"""A job's chunk messages: planned deterministically, published to the expert's queue, settled or not.

A message is plain JSON (Celery runs JSON only)::

    {"job": "...", "chunk": 3, "task": "extract", "lane": "timm", "queue": "expertbridge.timm",
     "params": {...}, "items": [[index, source], ...]}
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from workflows.batch.records import item_field
from workflows.batch.runner import RETRYABLE_REASONS


def plan_messages(job_id: str, meta: Mapping[str, Any], sources: Sequence[str]) -> Iterator[dict]:
    """The job's chunk messages (JSON), deterministic: chunk ``c`` is always the same items."""
    size = int(meta["chunk_size"])
    per_lane = -(-len(sources) // size)
    for li, (lane, queue) in enumerate(meta["lanes"]):
        for c in range(per_lane):
            lo, hi = c * size, min(len(sources), (c + 1) * size)
            yield {
                "job": job_id,
                "chunk": li * per_lane + c,
                "task": meta["task"],
                "lane": lane,
                "queue": queue,
                "params": meta.get("params") or {},
                "items": [[i, sources[i]] for i in range(lo, hi)],
            }


def settled(message: Mapping[str, Any], rows: Mapping[str, dict]) -> bool:
    """Every item of the chunk has its final row: it succeeded, or failed for a reason of its own."""
    for i, _ in message["items"]:
        row = rows.get(item_field(message["lane"], i))
        if row is None or (not row.get("ok") and (row.get("reason") or "task_failed") in RETRYABLE_REASONS):
            return False
    return True


def publish_chunk(app, message: Mapping[str, Any], *, producer=None) -> None:
    app.send_task(
        "expertbridge.run_chunk",
        kwargs={"message": dict(message)},
        queue=message["queue"],
        producer=producer,
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0},
    )
