"""The feature store: content-addressed keys, hit/miss accounting, concurrency, crashes, Redis,
and integrity: a damaged, foreign or old-format value is a logged miss, never a wrong array."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest

from cache.codec import DamagedRecordError, decode_record, encode_record
from cache.keys import feature_key
from cache.redis_store import RedisStore
from cache.store import DirectoryStore

REPO = Path(__file__).resolve().parents[1]
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
    blob = encode_record("a" * 64, x)
    assert blob.startswith(b"EBF2") and b"pickle" not in blob
    y = decode_record("a" * 64, blob)
    assert y.dtype == np.float16 and np.array_equal(x, y) and y.flags.writeable
    with pytest.raises(DamagedRecordError):
        decode_record("a" * 64, b"\x80\x04pickle")
    with pytest.raises(DamagedRecordError, match="checksum"):  # the key is checksummed: no copying under another
        decode_record("b" * 64, blob)


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


# --------------------------------------------------------------------------- integrity: damage is a miss


def _sealed(key: str, header: bytes, payload: bytes, *, n: int | None = None) -> bytes:
    """A record with a *valid* checksum around any header and payload: only the header checks can refuse it."""
    body = struct.pack("<I", len(header) if n is None else n) + header + payload
    return b"EBF2" + struct.pack("<I", zlib.crc32(body, zlib.crc32(key.encode()))) + body


def _ebf1(arr: np.ndarray) -> bytes:
    """A Redis value as written before records carried a checksum."""
    header = json.dumps({"dtype": arr.dtype.name, "shape": list(arr.shape)}).encode()
    return b"EBF1" + struct.pack("<I", len(header)) + header + arr.tobytes()


def _hdr(dtype, shape, **extra) -> bytes:
    return json.dumps({"dtype": dtype, "shape": shape, **extra}).encode()


#: Records a store must refuse, built for a key; the first ones have a valid checksum and lie in their header.
BAD_RECORDS = {
    "payload one element short": lambda k: _sealed(k, _hdr("float32", [4]), bytes(12)),
    "payload one byte long": lambda k: _sealed(k, _hdr("float32", [4]), bytes(17)),
    "shape product mismatch": lambda k: _sealed(k, _hdr("float32", [2, 3]), bytes(16)),
    "huge shape, tiny payload": lambda k: _sealed(k, _hdr("float32", [2**40]), bytes(16)),
    "dtype object": lambda k: _sealed(k, _hdr("object", [1]), bytes(8)),
    "dtype float128": lambda k: _sealed(k, _hdr("float128", [1]), bytes(16)),
    "dtype unicode": lambda k: _sealed(k, _hdr("<U2", [1]), bytes(8)),
    "dtype not a string": lambda k: _sealed(k, json.dumps({"dtype": ["float32"], "shape": [1]}).encode(), bytes(4)),
    "negative dimension": lambda k: _sealed(k, _hdr("uint8", [-4]), bytes(4)),
    "float dimension": lambda k: _sealed(k, _hdr("uint8", [4.0]), bytes(4)),
    "bool dimension": lambda k: _sealed(k, _hdr("uint8", [True]), bytes(1)),
    "extra header key": lambda k: _sealed(k, _hdr("uint8", [4], fortran_order=True), bytes(4)),
    "header not JSON": lambda k: _sealed(k, b"\xff\xfe{", bytes(4)),
    "header a JSON list": lambda k: _sealed(k, b"[1]", bytes(4)),  # raised TypeError before
    "header length past the end": lambda k: _sealed(k, _hdr("uint8", [4]), bytes(4), n=10_000),
    "empty": lambda k: b"",
    "cut inside the prefix": lambda k: b"EBF2\x00",  # raised struct.error before
    "old format without checksum": lambda k: _ebf1(np.ones(4, dtype=np.float32)),
    "a pickle": lambda k: b"\x80\x04\x95" + bytes(40),
}


@pytest.fixture(params=["dir", "redis"])
def any_store(request, tmp_path):
    if request.param == "dir":
        return DirectoryStore(tmp_path / "store")
    return request.getfixturevalue("redis_store")


def _raw(store, key: str) -> bytes:
    if isinstance(store, DirectoryStore):
        return store._path(key).read_bytes()
    return store.client.get(store._rkey(key))


def _set_raw(store, key: str, blob: bytes) -> None:
    if isinstance(store, DirectoryStore):
        store._path(key).parent.mkdir(exist_ok=True)
        store._path(key).write_bytes(blob)
    else:
        store.client.set(store._rkey(key), blob)


@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_records_that_lie_about_dtype_shape_or_length_are_refused(case):
    with pytest.raises(DamagedRecordError):
        decode_record("d" * 64, BAD_RECORDS[case]("d" * 64))


def test_every_single_byte_change_of_a_record_is_detected():
    key = "e" * 64
    blob = encode_record(key, np.array([1.5, -2.0, 3.25], dtype=np.float32))
    for pos in range(len(blob)):  # every position, every one of the 255 other byte values
        for xor in range(1, 256):
            bad = bytearray(blob)
            bad[pos] ^= xor
            with pytest.raises(DamagedRecordError):
                decode_record(key, bytes(bad))
    for cut in range(len(blob)):  # every truncation
        with pytest.raises(DamagedRecordError):
            decode_record(key, blob[:cut])


def test_bad_values_in_a_store_are_logged_misses_removed_and_rewritable(any_store, caplog):
    keys = {case: f"{i:064x}" for i, case in enumerate(BAD_RECORDS)}
    for case, key in keys.items():
        _set_raw(any_store, key, BAD_RECORDS[case](key))
    with caplog.at_level(logging.WARNING):
        assert any_store.get_many(keys.values()) == {}  # no struct.error / TypeError: each one a miss
    assert (any_store.stats.damaged, any_store.stats.misses, len(any_store)) == (len(keys), len(keys), 0)
    assert all(key in caplog.text for key in keys.values())
    any_store.put_many({key: np.full(3, i, dtype=np.int64) for i, key in enumerate(keys.values())})
    healed = any_store.get_many(keys.values())
    assert all(np.array_equal(healed[key], np.full(3, i)) for i, key in enumerate(keys.values()))


def test_a_flipped_byte_anywhere_is_a_miss_never_a_wrong_array(any_store, caplog):
    """A few hundred values, one random byte of each flipped (magic, checksum, header, payload): all caught."""
    rng = random.Random(10)
    values = {}
    for i in range(256):
        shape = rng.choice([(64,), (4, 16), (7,), ()])
        dtype = rng.choice(["float32", "float16", "float64", "int64", "uint8"])
        values[f"{i:064x}"] = (np.random.default_rng(i).normal(size=shape) * 100).astype(dtype)
    any_store.put_many(values)
    regions = {"prefix": 0, "header": 0, "payload": 0}
    for key, value in values.items():
        blob = bytearray(_raw(any_store, key))
        pos = rng.randrange(len(blob))
        blob[pos] ^= rng.randrange(1, 256)
        _set_raw(any_store, key, bytes(blob))
        payload_at = len(blob) - value.nbytes
        regions["prefix" if pos < 12 else "header" if pos < payload_at else "payload"] += 1
    assert min(regions.values()) >= 10, regions  # every part of a record was hit
    with caplog.at_level(logging.WARNING):
        got = any_store.get_many(values)
    wrong = [k for k, v in got.items() if not (v.dtype == values[k].dtype and np.array_equal(v, values[k]))]
    assert (len(got), len(wrong)) == (0, 0), f"{len(got)} flips not detected, {len(wrong)} wrong arrays"
    assert any_store.stats.damaged == len(values) and len(any_store) == 0
    assert all(key in caplog.text for key in values)


def test_values_in_the_format_before_checksums_read_as_misses_and_are_replaced(tmp_path, redis_store, caplog):
    x = np.arange(8, dtype=np.float32)
    store = DirectoryStore(tmp_path)
    old, other = tmp_path / "aa" / ("a" * 64 + ".npy"), tmp_path / "bb" / ("b" * 64 + ".npy")
    for path in (old, other):  # the layout before checksums: root/ab/<key>.npy written by np.save
        path.parent.mkdir()
        np.save(path, x)
    assert store.get("a" * 64) is None and len(store) == 0
    store.put("a" * 64, x)  # recomputed: the new entry supersedes the old file
    assert np.array_equal(store.get("a" * 64), x) and not old.exists()
    assert store.prune() == 0 and not other.exists() and len(store) == 1  # prune drops leftover old entries

    redis_store.client.set(redis_store._rkey("c" * 64), _ebf1(x))
    with caplog.at_level(logging.WARNING):
        assert redis_store.get("c" * 64) is None
    assert "c" * 64 in caplog.text and "without a checksum" in caplog.text
    redis_store.put("c" * 64, x)
    assert np.array_equal(redis_store.get("c" * 64), x)


def test_export_to_safetensors_leaves_out_damaged_entries(tmp_path):
    from safetensors.numpy import load_file

    store = DirectoryStore(tmp_path / "s")
    store.put_many({"a" * 64: np.ones(3, dtype=np.float32), "b" * 64: np.zeros(2, dtype=np.float32)})
    blob = bytearray(store._path("b" * 64).read_bytes())
    blob[-1] ^= 0x40
    store._path("b" * 64).write_bytes(bytes(blob))
    assert store.export(tmp_path / "all.safetensors") == 1
    assert list(load_file(str(tmp_path / "all.safetensors"))) == ["a" * 64]


def test_size_and_prune_skip_files_that_vanish_after_listing(tmp_path, monkeypatch):
    store = DirectoryStore(tmp_path)
    store.put_many({k * 64: np.zeros(100, dtype=np.float32) for k in "abc"})
    one = store._path("a" * 64).stat().st_size
    listed = list(store._files())
    store.delete(["a" * 64])  # another process deletes it between our listing and our stat
    monkeypatch.setattr(store, "_files", lambda suffix=".ebf": iter(listed if suffix == ".ebf" else []))
    assert store.nbytes() == 2 * one
    assert store.prune(max_bytes=0) == 2 and not list(tmp_path.glob("??/*.ebf"))


CHURNER = """
import os, random, sys, numpy as np
os.fsync = lambda fd: None  # durability is not what this is about
from cache.store import DirectoryStore
store, one = DirectoryStore(sys.argv[1]), int(sys.argv[2])
values = {f"{i:064x}": np.full(256, i, dtype=np.float32) for i in range(40)}
rng = random.Random(1)
print("churning", flush=True)
while not os.path.exists(sys.argv[3]):
    store.delete(rng.sample(list(values), 8))
    store.prune(max_bytes=30 * one)
    store.put_many(values)
"""


def test_reads_racing_deletes_and_prunes_are_hits_or_misses(tmp_path, monkeypatch):
    """Readers, a deleting and a pruning thread and another process doing both, on one directory:
    no exception, every hit the right value (a file that vanishes mid-read is a miss)."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # durability is not what this test is about
    store = DirectoryStore(tmp_path / "store")
    values = {f"{i:064x}": np.full(256, i, dtype=np.float32) for i in range(40)}
    store.put_many(values)
    one = store._path(next(iter(values))).stat().st_size
    stop, errors, counts = threading.Event(), [], {"hits": 0, "misses": 0}

    def guarded(fn):
        def run():
            try:
                fn()
            except BaseException as err:  # noqa: BLE001 - reported by the test
                errors.append(err)
                stop.set()

        return threading.Thread(target=run)

    def read():
        for _ in range(150):
            got = store.get_many(values)
            for key, value in got.items():
                if not np.array_equal(value, values[key]):
                    raise AssertionError(f"wrong value for {key}")
            counts["hits"] += len(got)
            counts["misses"] += len(values) - len(got)
            if stop.is_set():
                return

    def delete_and_rewrite():
        rng = random.Random(0)
        while not stop.is_set():
            doomed = rng.sample(list(values), 8)
            store.delete(doomed)
            store.put_many({k: values[k] for k in doomed})

    def prune():
        while not stop.is_set():
            store.prune(max_bytes=30 * one)
            store.nbytes()
            store.put_many(values)

    done = tmp_path / "done"
    other = subprocess.Popen(
        [sys.executable, "-c", CHURNER, str(store.root), str(one), str(done)], stdout=subprocess.PIPE, cwd=REPO
    )
    switch = sys.getswitchinterval()
    try:
        assert other.stdout.readline().strip() == b"churning"
        sys.setswitchinterval(1e-5)  # interleave the threads finely
        readers = [guarded(read) for _ in range(2)]
        churn = [guarded(delete_and_rewrite), guarded(prune)]
        for t in readers + churn:
            t.start()
        for t in readers:
            t.join(120)
        stop.set()
        for t in churn:
            t.join(30)
    finally:
        sys.setswitchinterval(switch)
        done.touch()
        assert other.wait(30) == 0, "the other process failed (its traceback is above)"
    assert not errors, f"{len(errors)} errors, first: {errors[0]!r}"
    assert counts["hits"] + counts["misses"] == 2 * 150 * len(values)
    assert counts["hits"] > 0 and counts["misses"] > 0, counts  # the race was really run
