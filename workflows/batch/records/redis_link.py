"""Talking to Redis from batch code: a client, the errors that mean "Redis is away", and retrying through them.

client = redis_client("redis://127.0.0.1:6379/0")
retrying(client.ping, seconds=10)          # waits out a short outage, then raises
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def redis_errors() -> tuple[type[BaseException], ...]:
    """Errors meaning "Redis is away" (retried, then the task is redelivered), not "bad data"."""
    import redis

    return (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.ReadOnlyError)


def retrying(fn: Callable[[], T], seconds: float) -> T:
    """Call ``fn``, retrying while Redis is unreachable for up to ``seconds``.

    ``fn`` may be several commands (a read, then a transaction): the whole of it runs again.
    redis-py's :class:`~redis.retry.Retry` does the loop and the backoff (0.2 s doubling up to
    2 s). It counts retries, but ``redis_retry_seconds`` is a time budget that includes the
    attempts themselves (an unreachable host takes the connect timeout each time), so the
    failure hook ends it when the next wait would pass the deadline.
    """
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    backoff = ExponentialBackoff(cap=2.0, base=0.1)  # compute(n) = min(2, 0.1 * 2**n): 0.2, 0.4, 0.8, 1.6, 2, ...
    deadline = time.monotonic() + seconds
    failures = 0

    def give_up_at_deadline(error: Exception) -> None:
        nonlocal failures
        failures += 1  # counted here: redis-py < 6 does not pass the count to the hook
        if time.monotonic() + backoff.compute(failures) > deadline:
            raise error

    return Retry(backoff, retries=-1, supported_errors=redis_errors()).call_with_retry(fn, give_up_at_deadline)


def redis_client(url: str, *, connect_timeout: float = 3.0):
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=connect_timeout, socket_timeout=30, socket_keepalive=True)
