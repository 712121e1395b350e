"""The feature store batch jobs read and write: a directory (embedded) or Redis shared by the workers.

store = batch_store(Settings())                      # DirectoryStore(settings.store_dir) without a broker
store = batch_store(settings, retry_seconds=30)      # a worker's: waits out a short Redis outage
"""

from __future__ import annotations

from cache.store import DirectoryStore, FeatureStore
from experts import ConfigError
from workflows.batch.queues import DEFAULT_REDIS, QUEUE_PREFIX
from workflows.batch.records import redis_client, retrying
from workflows.settings import Settings


class RetryingStore(FeatureStore):
    """A store whose reads and writes wait out a short Redis outage (a worker's view of the shared store)."""

    def __init__(self, inner: FeatureStore, seconds: float) -> None:
        super().__init__()
        self.inner, self.seconds = inner, seconds

    def __repr__(self) -> str:
        return f"RetryingStore({self.inner!r})"

    def _get_many(self, keys):
        return retrying(lambda: self.inner._get_many(keys), self.seconds)

    def _put_many(self, items):
        retrying(lambda: self.inner._put_many(items), self.seconds)

    def _prepare(self, value):
        return self.inner._prepare(value)

    def keys(self):
        return self.inner.keys()

    def delete(self, keys):
        return self.inner.delete(keys)

    def nbytes(self):
        return self.inner.nbytes()

    def prune(self, **kwargs):
        return self.inner.prune(**kwargs)


def batch_store(settings: Settings, *, retry_seconds: float = 0.0) -> FeatureStore:
    """The feature store batch jobs read and write (see ``batch_store`` in the settings)."""
    kind = settings.batch_store
    if kind == "auto":
        kind = "redis" if settings.broker_url else "dir"
    if kind == "dir":
        return DirectoryStore(settings.store_dir)
    if kind == "redis":
        from cache.redis_store import RedisStore

        url = settings.batch_store_url or settings.broker_url or DEFAULT_REDIS
        store = RedisStore(redis_client(url), namespace=QUEUE_PREFIX)
        return RetryingStore(store, retry_seconds) if retry_seconds else store
    raise ConfigError(f"batch_store must be auto, redis or dir, got {settings.batch_store!r}")
