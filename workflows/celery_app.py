"""The Celery application: configuration only, safe defaults, built from :class:`Settings`.

JSON is the only serializer accepted (never pickle); tasks are acknowledged late
and re-queued if their worker dies, and each worker takes one task at a time so
a slow expert batch never hides others behind it.

    expertbridge worker --queues cpu,gpu     # or: celery -A workflows.celery_app worker
"""

from __future__ import annotations

from celery import Celery

from workflows.settings import Settings

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"


def make_celery(settings: Settings | None = None) -> Celery:
    """A configured Celery app; broker and backend come from the settings (default: local Redis)."""
    settings = settings or Settings()
    broker = settings.broker_url or DEFAULT_BROKER
    app = Celery("expertbridge", broker=broker, backend=settings.result_backend or broker)
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
        # Redis re-delivers unacked tasks after this; it must outlast the longest task.
        broker_transport_options={"visibility_timeout": settings.task_soft_time_limit * 2 + 120},
        result_expires=7 * 24 * 3600,
        broker_connection_retry_on_startup=True,
    )
    return app


app = make_celery()
