"""The feature store: content-addressed keys, hit/miss accounting, concurrency, crashes, Redis."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from cache.keys import feature_key
from cache.redis_store import RedisStore, decode_array, encode_array
from cache.store import DirectoryStore

SHA = "0" * 63 + "1"
IDENTITY = {"expert": "timm", "weights": "lite0.pth@abc", "config": {"model": "tf_efficientnet_lite0"}}


def test_key_changes_with_weights_config_image_and_variant():
    base = feature_key(SHA, IDENTITY)
    assert base == feature_key(SHA, dict(reversed(list(IDENTITY.items()))))  # order-free
    assert feature_key(SHA, {**IDENTITY, "weights": "lite0.pth@abd"}) != base
    assert feature_key(SHA, {**IDENTITY, "config": {"model": "tf_efficientnet_lite0", "normalize": False}}) != base
    assert feature_key("2" * 64, IDENTITY) != base
    assert feature_key(SHA, IDENTITY, variant={"view": 1}) != base
    with pytest.raises(ValueError, match="sha256"):
        feature_key("not-a-hash", IDENTITY)


def test_hits_misses_and_exact_round_trip(tmp_path):
    store = DirectoryStore(tmp_path)
    a, b = np.random.default_rng(0).normal(size=(2, 384)).astype(np.float32)
    store.put_many({"a" * 64: a})
    got = store.get_many(["a" * 64, "b" * 64])
    assert list(got) == ["a" * 64] and np.array_equal(got["a" * 64], a) and got["a" * 64].dtype == np.float32
    assert (store.stats.hits, store.stats.misses, store.stats.writes) == (1, 1, 1)
    store.put("b" * 64, b)
    assert len(store) == 2 and set(store.keys()) == {"a" * 64, "b" * 64}
    assert store.nbytes() >= 2 * 384 * 4


def test_float16_storage_halves_the_bytes(tmp_path):
    full, half = DirectoryStore(tmp_path / "f32"), DirectoryStore(tmp_path / "f16", dtype="float16")
    x = np.linspace(-1, 1, 1000, dtype=np.float32)
    full.put("a" * 64, x)
    half.put("a" * 64, x)
    assert half.get("a" * 64).dtype == np.float16
    assert half.nbytes() < 0.6 * full.nbytes()
    np.testing.assert_allclose(half.get("a" * 64), x, atol=1e-3)


def test_refuses_object_arrays(tmp_path):
    with pytest.raises(TypeError, match="cannot store dtype object"):
        DirectoryStore(tmp_path).put("a" * 64, np.array([{"x": 1}], dtype=object))


def test_prune_evicts_least_recently_used(tmp_path):
    store = DirectoryStore(tmp_path)
    for i, key in enumerate(["a" * 64, "b" * 64, "c" * 64]):
        store.put(key, np.zeros(1000, dtype=np.float32))
        os.utime(store._path(key), (1000 + i, 1000 + i))
    store.get("a" * 64)  # touch: now the most recent
    one = store._path("a" * 64).stat().st_size
    assert store.prune(max_bytes=2 * one) == 1
    assert set(store.keys()) == {"a" * 64, "c" * 64}
    assert store.prune(older_than=3600) == 1 and set(store.keys()) == {"a" * 64}


def test_export_to_safetensors(tmp_path):
    from safetensors.numpy import load_file

    store = DirectoryStore(tmp_path / "s")
    store.put_many({"a" * 64: np.ones(3, dtype=np.float32), "b" * 64: np.zeros(2, dtype=np.float16)})
    assert store.export(tmp_path / "all.safetensors") == 2
    loaded = load_file(str(tmp_path / "all.safetensors"))
    assert np.array_equal(loaded["a" * 64], np.ones(3)) and loaded["b" * 64].dtype == np.float16


def _writer(root: str, seed: int, n: int) -> None:
    store = DirectoryStore(root)
    for i in range(n):
        # Both processes write the same keys with the same values, and some keys of their own.
        shared = {f"{i:064x}": np.full(256, i, dtype=np.float32)}
        own = {f"{seed:02x}{i:062x}": np.full(256, seed, dtype=np.float32)}
        store.put_many({**shared, **own})


def test_two_processes_writing_concurrently(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), seed, 150)) for seed in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = DirectoryStore(tmp_path)
    assert len(store) == 150 * 3
    for i in range(150):
        assert np.array_equal(store.get(f"{i:064x}"), np.full(256, i, dtype=np.float32))
    assert not list(tmp_path.glob("??/.tmp-*"))


CRASHING_WRITER = """
import sys, numpy as np
from cache.store import DirectoryStore
store = DirectoryStore(sys.argv[1])
big = np.ones(4_000_000, dtype=np.float32)  # 16 MB per entry: a kill lands mid-write
i = 0
while True:
    store.put(f"{i % 7:064x}", big * (i % 7))
    i += 1
    if i == 3:
        print("writing", flush=True)
"""


def test_killed_writer_leaves_no_corrupt_entry(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_WRITER, str(tmp_path)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"writing"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    store = DirectoryStore(tmp_path)
    keys = list(store.keys())
    assert keys, "some entries should have been completed before the kill"
    for key in keys:
        value = store.get(key)
        assert value is not None and value.shape == (4_000_000,)
        assert float(value[0]) == float(value[-1]) == int(key, 16) % 7
    for leftover in tmp_path.glob("??/.tmp-*"):  # a partial temp file may remain, never under a real key
        os.utime(leftover, (0, 0))
    store.prune()
    assert not list(tmp_path.glob("??/.tmp-*"))


def test_unreadable_file_is_a_miss_and_removed(tmp_path):
    store = DirectoryStore(tmp_path)
    store.put("a" * 64, np.ones(8, dtype=np.float32))
    store._path("a" * 64).write_bytes(b"\x93NUMPY garbage")
    assert store.get("a" * 64) is None and "a" * 64 not in set(store.keys())


# --------------------------------------------------------------------------- Redis (the real server)


@pytest.fixture
def redis_store():
    import redis

    client = redis.Redis.from_url(os.environ.get("EXPERTBRIDGE_TEST_REDIS", "redis://127.0.0.1:6379/15"))
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail("the tests need Redis on 127.0.0.1:6379 (set EXPERTBRIDGE_TEST_REDIS to use another)")
    store = RedisStore(client, namespace=f"test-{uuid.uuid4().hex[:8]}")
    yield store
    store.clear()


def test_record_format_round_trip_without_pickle():
    x = np.arange(12, dtype=np.float16).reshape(3, 4)
    blob = encode_array(x)
    assert blob.startswith(b"EBF1") and b"pickle" not in blob
    y = decode_array(blob)
    assert y.dtype == np.float16 and np.array_equal(x, y)
    with pytest.raises(ValueError):
        decode_array(b"\x80\x04pickle")


def test_redis_store_round_trip_stats_and_listing(redis_store):
    a = np.random.default_rng(1).normal(size=512).astype(np.float32)
    redis_store.put_many({"a" * 64: a, "b" * 64: a * 2})
    got = redis_store.get_many(["a" * 64, "c" * 64])
    assert np.array_equal(got["a" * 64], a) and "c" * 64 not in got
    assert (redis_store.stats.hits, redis_store.stats.misses) == (1, 1)
    assert set(redis_store.keys()) == {"a" * 64, "b" * 64} and len(redis_store) == 2
    assert redis_store.nbytes() >= 2 * 512 * 4
    assert redis_store.delete(["b" * 64]) == 1 and len(redis_store) == 1


def test_redis_store_shared_between_clients_and_pruned(redis_store):
    import redis

    other = RedisStore(redis.Redis(connection_pool=redis_store.client.connection_pool), namespace=redis_store.namespace)
    redis_store.put("a" * 64, np.ones(100, dtype=np.float32))
    time.sleep(0.01)
    other.put("b" * 64, np.ones(100, dtype=np.float32))
    assert np.array_equal(other.get("a" * 64), np.ones(100))
    one = redis_store.client.strlen(redis_store._rkey("a" * 64))
    assert redis_store.prune(max_bytes=one) == 1
    assert set(redis_store.keys()) == {"a" * 64}  # "a" was read last, "b" evicted
