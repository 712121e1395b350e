"""The Celery application: configuration only, safe defaults, built from :class:`Settings`.

JSON is the only serializer accepted (never pickle); tasks are acknowledged late
and re-queued if their worker dies, and each worker takes one task at a time so
a slow expert batch never hides others behind it. Batch chunks are routed to one
queue per expert (``expertbridge.timm``, ``expertbridge.yolo``, …; remap with
``EXPERTBRIDGE_EXPERT_QUEUES='{"yolo": "gpu"}'``), so heavy experts get their own workers.

Models load once per worker *process*, in ``worker_process_init`` — i.e. after the
prefork pool has forked, never in the parent (CUDA cannot survive a fork).

    expertbridge worker --experts timm,yolo   # or: celery -A workflows.celery_app worker -Q expertbridge.timm
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache

from celery import Celery
from celery.signals import worker_init, worker_process_init

from workflows.cpu_tuning import tune_for_busy_cpus
from workflows.settings import Settings

tune_for_busy_cpus()  # a worker started as `celery -A workflows.celery_app worker` too (workflows/cpu_tuning.py)

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
DEFAULT_QUEUE = "expertbridge"

log = logging.getLogger(__name__)


def visibility_timeout(settings: Settings) -> int:
    """Seconds before Redis hands an unacknowledged task (its worker died) to another worker."""
    return settings.broker_visibility_timeout or settings.task_soft_time_limit * 2 + 120


def route_task(name, args, kwargs, options, task=None, **kw):
    """Batch chunks go to their lane's queue (set at submit); everything else to the default queue."""
    if name == "expertbridge.run_chunk":
        message = (kwargs or {}).get("message") or (args[0] if args else {})
        if isinstance(message, dict) and message.get("queue"):
            return {"queue": message["queue"]}
    return None


def make_celery(settings: Settings | None = None) -> Celery:
    """A configured Celery app; broker and backend come from the settings (default: local Redis)."""
    settings = settings or Settings()
    broker = settings.broker_url or DEFAULT_BROKER
    vt = visibility_timeout(settings)
    app = Celery("expertbridge", broker=broker, backend=settings.result_backend or broker, include=["workflows.tasks"])
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_soft_time_limit + 60,
        worker_max_tasks_per_child=settings.worker_max_tasks_per_child,
        worker_max_memory_per_child=settings.worker_max_memory_per_child,
        task_default_queue=DEFAULT_QUEUE,
        task_routes=(route_task,),
        # Redis re-delivers unacked tasks after this; it must outlast the longest task (hard limit = soft + 60).
        # Abandoned tasks are looked for every unacked_restore_interval s (kombu's default sweep is ~100 s).
        broker_transport_options={
            "visibility_timeout": vt,
            "unacked_restore_interval": max(1, min(60, vt // 10)),
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": 5,
        },
        # On a broker outage, let running chunks finish: they are idempotent, their rows land once Redis is
        # back, and the redelivery that follows (the ack was lost with the connection) is a no-op.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        result_backend_always_retry=True,
        result_backend_max_retries=10,
        result_expires=7 * 24 * 3600,
        broker_connection_retry_on_startup=True,
    )
    if vt <= settings.task_soft_time_limit + 60:
        log.warning(
            "visibility_timeout %ss is shorter than the task time limit %ss: slow tasks may run twice "
            "(harmless for batch chunks, which are idempotent, but wasted work)",
            vt,
            settings.task_soft_time_limit + 60,
        )
    return app


app = make_celery()


@lru_cache(maxsize=8)
def _app_for(settings_json: str) -> Celery:
    return make_celery(Settings.model_validate_json(settings_json))


def app_for(settings: Settings) -> Celery:
    """The app configured for ``settings`` (the module's ``app`` when they are the environment's)."""
    if settings == Settings():
        return app
    return _app_for(settings.model_dump_json())


# --------------------------------------------------------------------------- worker processes

_CONCURRENCY = 1


@worker_init.connect
def _remember_concurrency(sender=None, **_):
    """Runs in the worker's main process, before the pool forks: no model is touched here."""
    global _CONCURRENCY
    _CONCURRENCY = int(getattr(sender, "concurrency", 1) or 1)
    pool = getattr(sender, "pool_cls", None)
    if any(kind in f"{getattr(pool, '__module__', '')}.{pool}" for kind in ("solo", "threads")):
        _init_worker_process()  # no fork with these pools: this process runs the tasks


@worker_process_init.connect
def _init_worker_process(**_):
    """Runs in each pool process after the fork: set torch threads, load this worker's experts once."""
    settings = Settings()
    import torch

    threads = settings.worker_threads or max(1, (os.cpu_count() or 1) // _CONCURRENCY)
    torch.set_num_threads(threads)
    if settings.worker_experts:
        from workflows.batch.runner import preload

        preload([n.strip() for n in settings.worker_experts.split(",") if n.strip()], settings)
