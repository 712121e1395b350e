"""workflows.batch.records.retrying: what a worker retries while Redis is away, and for how long.

The loop is redis-py's ``Retry`` with ``ExponentialBackoff``; these tests pin what it must keep
from the hand-written loop it replaced: only "Redis is away" errors are retried, the whole
(multi-command) operation runs again, waits go 0.2, 0.4, 0.8 … s, and ``seconds`` is a time
budget, not a count of attempts.
"""

from __future__ import annotations

import time

import pytest
import redis
from conftest import BATCH_REDIS

from workflows.batch.jobs import RetryingStore
from workflows.batch.records import RedisJobRecords, redis_client, retrying


class Flaky:
    """``fn`` for :func:`retrying`: raises ``error`` the first ``failures`` calls, then returns ``value``."""

    def __init__(self, failures: int, error: BaseException, value: object = "ok") -> None:
        self.failures, self.error, self.value = failures, error, value
        self.calls: list[float] = []

    def __call__(self):
        self.calls.append(time.monotonic())
        if len(self.calls) <= self.failures:
            raise self.error
        return self.value


def gaps(calls: list[float]) -> list[float]:
    return [b - a for a, b in zip(calls, calls[1:])]


@pytest.mark.parametrize(
    "error", [redis.ConnectionError("down"), redis.TimeoutError("slow"), redis.BusyLoadingError("loading")]
)
def test_redis_away_is_retried_with_doubling_waits(error):
    fn = Flaky(2, error)
    assert retrying(fn, seconds=5) == "ok"
    assert len(fn.calls) == 3
    first, second = gaps(fn.calls)
    assert 0.18 < first < 0.35 and 0.38 < second < 0.6  # 0.2 s, then 0.4 s


@pytest.mark.parametrize("error", [redis.ResponseError("WRONGTYPE"), ValueError("bad data"), KeyError("x")])
def test_other_errors_are_not_retried(error):
    fn = Flaky(1, error)
    with pytest.raises(type(error)):
        retrying(fn, seconds=5)
    assert len(fn.calls) == 1


def test_zero_seconds_means_one_attempt():
    fn = Flaky(1, redis.ConnectionError("down"))
    with pytest.raises(redis.ConnectionError):
        retrying(fn, seconds=0)
    assert len(fn.calls) == 1


def test_seconds_is_a_time_budget_that_counts_the_attempts_too():
    """Each attempt takes 0.3 s (a connect timeout): with 1 s, the waits 0.2 and 0.4 s fit, 0.8 s does not."""

    def slow_failure():
        calls.append(time.monotonic())
        time.sleep(0.3)
        raise redis.TimeoutError("connect timed out")

    calls: list[float] = []
    start = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        retrying(slow_failure, seconds=1.0)
    # attempt 0.3, wait 0.2, attempt 0.3 (t=0.8; 0.8 + 0.4 > 1): no third attempt
    assert len(calls) == 2, gaps(calls)
    assert time.monotonic() - start < 1.2


def test_unreachable_server_gives_up_within_the_budget():
    client = redis_client("redis://127.0.0.1:1/0", connect_timeout=0.5)  # port 1: nothing listens
    start = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        retrying(client.ping, seconds=1.0)
    assert 0.55 < time.monotonic() - start < 2.0  # waited 0.2 + 0.4 s, then the next wait would pass 1 s


class DropsFirstPipeline:
    """A real client whose first pipeline ``execute`` fails as if the connection dropped."""

    def __init__(self, client: redis.Redis) -> None:
        self.client, self.dropped = client, 0

    def __getattr__(self, name):
        return getattr(self.client, name)

    def pipeline(self, *args, **kwargs):
        pipe = self.client.pipeline(*args, **kwargs)
        if not self.dropped:
            self.dropped += 1

            def execute(*a, **k):
                pipe.reset()
                raise redis.ConnectionError("connection reset by peer")

            pipe.execute = execute
        return pipe


def test_a_multi_command_operation_runs_again_whole(redis_db):
    """begin_chunk reads the job, then runs a transaction: a drop in the transaction retries both."""
    client = DropsFirstPipeline(redis.Redis.from_url(BATCH_REDIS))
    records = RedisJobRecords(client, retry_seconds=5)
    RedisJobRecords(redis_db).create("job-1", {"state": "running", "created_at": 1.0}, ["a.jpg", "b.jpg"])
    start = records.begin_chunk("job-1", 0, ["0", "1"], worker="w")
    assert client.dropped == 1
    assert start.attempt == 1  # the failed transaction was not applied, the retried one was, once
    assert start.meta["state"] == "running"  # read again on the retry
    assert RedisJobRecords(redis_db).meta("job-1")["deliveries"] == 1


def test_retrying_store_waits_out_an_outage(redis_db):
    from cache.redis_store import RedisStore

    class Outage(RedisStore):
        down = 2

        def _get_many(self, keys):
            if Outage.down:
                Outage.down -= 1
                raise redis.ConnectionError("down")
            return super()._get_many(keys)

    inner = Outage(redis.Redis.from_url(BATCH_REDIS), namespace="expertbridge")
    store = RetryingStore(inner, seconds=5)
    assert store.get_many(["a" * 64]) == {}
    assert Outage.down == 0
