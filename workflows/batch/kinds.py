"""Task kinds: what a batch job does with each chunk of images (``extract``, ``classify``, ``reason``).

A kind is two functions in a small registry:

* ``plan(experts, params, settings) -> [Lane]`` runs at submit: it validates the request
  (a :class:`~experts.ConfigError` here means nothing is written) and says which lanes the
  job has. Each lane is one pass over every input, on one queue.
* ``run(ctx) -> (rows, stats)`` runs in the worker (or in-process) on one chunk: one JSON-safe
  row per item, in order, each with ``ok`` and, when not ok, ``error`` and ``reason``.

Adding a kind::

    register_task_kind(TaskKind("caption_and_count", plan=my_plan, run=my_run))
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experts import ConfigError, Expert, get_expert_class
from workflows.settings import Settings


@dataclass(frozen=True)
class Lane:
    """One pass over the job's inputs: ``name`` tags its rows; ``route`` picks the queue (an expert name)."""

    name: str
    route: str


@dataclass
class ChunkContext:
    """Everything a kind's ``run`` gets for one chunk."""

    lane: str
    params: Mapping[str, Any]
    items: list[tuple[int, str]]  # (index in the job, source)
    settings: Settings
    store: Any  # FeatureStore or None
    experts: Callable[[str], Expert]  # per-process cache: name -> loaded expert
    stats: dict[str, int] = field(default_factory=lambda: {"hits": 0, "misses": 0})


Plan = Callable[[Sequence[str], Mapping[str, Any], Settings], list[Lane]]
Run = Callable[[ChunkContext], list[dict]]


@dataclass(frozen=True)
class TaskKind:
    name: str
    plan: Plan
    run: Run
    description: str = ""


TASK_KINDS: dict[str, TaskKind] = {}


def register_task_kind(kind: TaskKind) -> TaskKind:
    TASK_KINDS[kind.name] = kind
    return kind


def get_task_kind(name: str) -> TaskKind:
    try:
        return TASK_KINDS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; tasks: {', '.join(sorted(TASK_KINDS))}") from None


def failed_row(index: int, source: str, error: str, reason: str) -> dict:
    return {"index": index, "source": source, "ok": False, "error": error, "reason": reason}


# --------------------------------------------------------------------------- extract


def _plan_extract(experts: Sequence[str], params: Mapping[str, Any], settings: Settings) -> list[Lane]:
    if not experts:
        raise ConfigError("extract needs at least one expert, e.g. experts=['timm']")
    if len(set(experts)) != len(experts):
        raise ConfigError(f"experts are repeated: {list(experts)}")
    for name in experts:
        get_expert_class(name)  # unknown names fail here, before anything is written
    return [Lane(name, name) for name in experts]


def _run_extract(ctx: ChunkContext) -> list[dict]:
    from cache.keys import feature_key
    from workflows.store_runner import run_through_store

    expert = ctx.experts(ctx.lane)
    sources = [src for _, src in ctx.items]
    results, run = run_through_store(expert, sources, ctx.store)
    ctx.stats["hits"] += run.hits
    ctx.stats["misses"] += run.misses
    rows = []
    for (index, source), r in zip(ctx.items, results):
        row = {"index": index, "source": source, "expert": ctx.lane, "sha256": r.sha256, "ok": r.ok}
        if r.ok:
            row["key"] = feature_key(r.sha256, expert.identity)
        else:
            row.update(error=r.error, reason=r.reason)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- classify


def _model_dir(params: Mapping[str, Any]) -> Path:
    model = params.get("model")
    if not model:
        raise ConfigError("classify needs params={'model': DIR} (a FewShotClassifier saved with .save(DIR))")
    path = Path(model)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path}: no saved few-shot classifier here (expected config.json, model.safetensors)")
    return path


def _plan_classify(experts: Sequence[str], params: Mapping[str, Any], settings: Settings) -> list[Lane]:
    import json

    from experts.stored import check_stored_spec

    config_file = _model_dir(params) / "config.json"
    config = json.loads(config_file.read_text())
    # The file may only hold plain expert fields (experts/stored.py): refuse it here, before anything is written.
    branches = [
        check_stored_spec(b["spec"], source=str(config_file), runtime=settings.expert_kwargs)["name"]
        for b in config.get("branches", [])
        if b.get("spec")
    ]
    if not branches:
        raise ConfigError(f"{params['model']}: the classifier names no expert branches")
    return [Lane("classify", branches[0])]  # routed to its first expert's queue (its workers have the weights)


@dataclass(frozen=True)
class _SavedClassifier:
    """Which saved classifier (its directory and when it was saved); ``settings`` only say how to load it."""

    path: str
    mtime: float
    settings: Settings = field(compare=False, hash=False)


@functools.lru_cache(maxsize=4)
def _loaded_classifier(saved: _SavedClassifier) -> Any:
    """A worker keeps the few classifiers it was last asked for; a re-saved model (new mtime) loads afresh
    and the stale one ages out instead of staying for the life of the process."""
    from workflows.fewshot import FewShotClassifier

    return FewShotClassifier.load(saved.path, settings=saved.settings)


def _run_classify(ctx: ChunkContext) -> list[dict]:
    path = _model_dir(ctx.params)
    clf = _loaded_classifier(
        _SavedClassifier(str(path.resolve()), os.path.getmtime(path / "config.json"), ctx.settings)
    )
    clf.store = ctx.store
    preds = clf.predict([src for _, src in ctx.items])
    rows = []
    for (index, source), p in zip(ctx.items, preds):
        if p.label is None:
            rows.append(failed_row(index, source, p.error or "unreadable", p.reason or "expert_failed"))
        else:
            rows.append(
                {"index": index, "source": source, "ok": True, "label": p.label, "probabilities": p.probabilities}
            )
    return rows


# --------------------------------------------------------------------------- reason


def _reasoning_entry():
    try:
        from workflows.reasoning import reason_for_batch
    except ImportError as err:
        raise ConfigError(
            f"the reason task needs workflows.reasoning.reason_for_batch, which is not available: {err}"
        ) from err
    return reason_for_batch


def _plan_reason(experts: Sequence[str], params: Mapping[str, Any], settings: Settings) -> list[Lane]:
    if not str(params.get("question") or "").strip():
        raise ConfigError("reason needs a question: params={'question': '...'} (CLI: --question)")
    _reasoning_entry()
    for name in experts:
        get_expert_class(name)
    return [Lane("reason", "reason")]


def _run_reason(ctx: ChunkContext) -> list[dict]:
    reason_for_batch = _reasoning_entry()
    kwargs = {"experts": tuple(ctx.params["experts"])} if ctx.params.get("experts") else {}
    out = reason_for_batch([src for _, src in ctx.items], ctx.params["question"], ctx.settings, **kwargs)
    rows = []
    for (index, source), result in zip(ctx.items, out):
        error = result.get("error")
        row = {**result, "index": index, "source": source, "ok": error is None}
        if error is not None:
            row["reason"] = row.get("reason") or "reasoning_failed"
        rows.append(row)
    return rows


register_task_kind(TaskKind("extract", _plan_extract, _run_extract, "features/evidence of each expert, in the store"))
register_task_kind(TaskKind("classify", _plan_classify, _run_classify, "a saved few-shot classifier's predictions"))
register_task_kind(TaskKind("reason", _plan_reason, _run_reason, "the CoT planner's answer to one question"))
