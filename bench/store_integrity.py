"""Feature-store integrity: flipped bytes are caught, and what the checksum costs on read.

    python bench/store_integrity.py                 # 1,000 values per store, ~30 s on 2 CPU cores
    python bench/store_integrity.py --quick         # smoke run: 200 values, 2 repeats
    python bench/store_integrity.py --redis redis://127.0.0.1:6379/5 --dim 1280

Two parts, for both stores (``DirectoryStore`` in a temp dir, ``RedisStore`` under a fresh
namespace of ``--redis``, deleted at the end):

(a) detection: ``--values`` stored float32 vectors of ``--dim`` (what an image encoder
    stores), one random byte of each stored record flipped (a uniform position over the
    whole record: magic, checksum, header length, JSON header, payload; a random non-zero
    XOR), then every key read back with ``get_many``. Counted: detected (a miss), wrong
    (an array returned that is not the original) and returned intact (an array equal to the
    original: possible only when the flip hit a byte that does not matter). The same damaged
    records are read first with the CRC check off (the dtype/shape/length checks stay on),
    to show what the checksum adds.

(b) read throughput: ``--values`` good values read with ``get_many`` in batches of
    ``--batch`` keys (a chunk's read), checksum on vs off, the two back to back per batch
    (order alternated), ``--repeats`` passes; values/s from the median per-batch time, and
    the median of the paired per-batch ratios. The decode alone (no I/O) is timed the same way.

The last line is the headline.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cache.codec import decode_record, encode_record  # noqa: E402
from cache.redis_store import RedisStore  # noqa: E402
from cache.store import DirectoryStore, FeatureStore  # noqa: E402

PREFIX = 12  # magic + crc32 + header length


def raw_access(store: FeatureStore) -> tuple[Callable[[str], bytes], Callable[[str, bytes], None]]:
    if isinstance(store, DirectoryStore):
        return (lambda k: store._path(k).read_bytes()), (lambda k, b: store._path(k).write_bytes(b))
    return (lambda k: store.client.get(store._rkey(k))), (lambda k, b: store.client.set(store._rkey(k), b))


def read_all(store: FeatureStore, keys: list[str], batch: int, *, checksum: bool) -> dict[str, np.ndarray]:
    store._verify_checksum = checksum
    out = {}
    for i in range(0, len(keys), batch):
        out.update(store.get_many(keys[i : i + batch]))
    store._verify_checksum = True
    return out


def detection(store: FeatureStore, values: dict[str, np.ndarray], batch: int, rng: random.Random) -> dict:
    """Flip one byte of each stored record; read back with the checksum off, then on."""
    keys = list(values)
    store.put_many(values)
    get_raw, set_raw = raw_access(store)
    damaged, regions = {}, {"prefix": 0, "header": 0, "payload": 0}
    for key in keys:
        blob = bytearray(get_raw(key))
        pos = rng.randrange(len(blob))
        blob[pos] ^= rng.randrange(1, 256)
        damaged[key] = bytes(blob)
        payload_at = len(blob) - values[key].nbytes
        regions["prefix" if pos < PREFIX else "header" if pos < payload_at else "payload"] += 1

    def count(got: dict[str, np.ndarray]) -> dict:
        intact = sum(1 for k, v in got.items() if v.dtype == values[k].dtype and np.array_equal(v, values[k]))
        return {"detected": len(keys) - len(got), "wrong": len(got) - intact, "intact": intact}

    for key, blob in damaged.items():
        set_raw(key, blob)
    off = count(read_all(store, keys, batch, checksum=False))
    for key, blob in damaged.items():  # the off pass removed what the header checks caught: same damage again
        set_raw(key, blob)
    store.stats.reset()
    on = count(read_all(store, keys, batch, checksum=True))
    assert store.stats.damaged == on["detected"], "every detection is counted as damaged"
    return {"on": on, "off": off, "regions": regions}


def paired(fn_on: Callable[[int], None], fn_off: Callable[[int], None], n_batches: int, repeats: int):
    """Per-batch times of both sides, back to back, order alternated; returns (on_times, off_times)."""
    t_on, t_off = [], []
    for r in range(repeats):
        for b in range(n_batches):
            sides = [(fn_on, t_on), (fn_off, t_off)]
            for fn, sink in sides if (r + b) % 2 == 0 else sides[::-1]:
                t0 = time.perf_counter()
                fn(b)
                sink.append(time.perf_counter() - t0)
    return t_on, t_off


def throughput(store: FeatureStore, values: dict[str, np.ndarray], batch: int, repeats: int) -> dict:
    keys = list(values)
    store.put_many(values)
    batches = [keys[i : i + batch] for i in range(0, len(keys), batch)]

    def read(checksum: bool) -> Callable[[int], None]:
        def run(b: int) -> None:
            store._verify_checksum = checksum
            got = store.get_many(batches[b])
            store._verify_checksum = True
            assert len(got) == len(batches[b])

        return run

    read(True)(0)  # warm up
    t_on, t_off = paired(read(True), read(False), len(batches), repeats)
    return summarize(t_on, t_off, batch)


def decode_throughput(values: dict[str, np.ndarray], batch: int, repeats: int) -> dict:
    blobs = [(k, encode_record(k, v)) for k, v in values.items()]
    batches = [blobs[i : i + batch] for i in range(0, len(blobs), batch)]

    def decode(checksum: bool) -> Callable[[int], None]:
        def run(b: int) -> None:
            for key, blob in batches[b]:
                decode_record(key, blob, verify_checksum=checksum)

        return run

    t_on, t_off = paired(decode(True), decode(False), len(batches), repeats)
    return summarize(t_on, t_off, batch)


def summarize(t_on: list[float], t_off: list[float], batch: int) -> dict:
    return {
        "on": batch / statistics.median(t_on),
        "off": batch / statistics.median(t_off),
        "ratio": statistics.median(a / b for a, b in zip(t_on, t_off)),  # time with / time without
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--values", type=int, default=1000, help="stored values per store (one flip each)")
    ap.add_argument("--dim", type=int, default=512, help="float32 elements per value")
    ap.add_argument("--batch", type=int, default=64, help="keys per get_many")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--redis", default=os.environ.get("EXPERTBRIDGE_TEST_REDIS", "redis://127.0.0.1:6379/15"))
    ap.add_argument("--no-redis", action="store_true", help="DirectoryStore only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.values, args.repeats = 200, 2

    logging.getLogger("cache").setLevel(logging.ERROR)  # one warning per damaged entry: counted below instead
    rng = random.Random(args.seed)
    gen = np.random.default_rng(args.seed)

    def fresh_values(tag: str) -> dict[str, np.ndarray]:
        return {f"{tag}{i:062x}": gen.normal(size=args.dim).astype(np.float32) for i in range(args.values)}

    t_start = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        stores: dict[str, FeatureStore] = {"dir": DirectoryStore(tmp)}
        if not args.no_redis:
            stores["redis"] = RedisStore.from_url(args.redis, namespace=f"bench-{uuid.uuid4().hex[:8]}")
        try:
            for name, store in stores.items():
                results[name] = {
                    "detect": detection(store, fresh_values("aa"), args.batch, rng),
                    "read": throughput(store, fresh_values("bb"), args.batch, args.repeats),
                }
        finally:
            if "redis" in stores:
                stores["redis"].clear()
    decode = decode_throughput(fresh_values("cc"), args.batch, args.repeats)

    print(f"{args.values} values per store, float32[{args.dim}], one random byte flipped in each stored record")
    print(f"{'store':6} {'checksum':9} {'detected':>9} {'wrong':>6} {'intact':>7}   flips in prefix/header/payload")
    for name, r in results.items():
        d = r["detect"]
        reg = "/".join(str(d["regions"][k]) for k in ("prefix", "header", "payload"))
        for side in ("off", "on"):
            c = d[side]
            print(f"{name:6} {side:9} {c['detected']:>9} {c['wrong']:>6} {c['intact']:>7}   {reg}")
    print(f"\nread throughput, get_many of {args.batch} keys, median of {args.repeats} paired passes (values/s)")
    print(f"{'':14} {'checksum on':>12} {'off':>12} {'time on/off':>12}")
    for name, r in [*((n, r["read"]) for n, r in results.items()), ("decode only", decode)]:
        print(f"{name:14} {r['on']:>12,.0f} {r['off']:>12,.0f} {r['ratio']:>12.3f}")
    print(f"\ntotal {time.perf_counter() - t_start:.0f}s; load average {os.getloadavg()[0]:.2f} (1 min) at end")

    parts = []
    for name, r in results.items():
        on, off = r["detect"]["on"], r["detect"]["off"]
        parts.append(
            f"{name}: {on['detected']}/{args.values} flips detected, {on['wrong']} wrong arrays "
            f"(CRC off: {off['wrong']} wrong); reads {r['read']['on']:,.0f} vs {r['read']['off']:,.0f} values/s "
            f"without CRC (×{r['read']['ratio']:.2f} time)"
        )
    print("headline: " + " | ".join(parts))
    ok = all(r["detect"]["on"]["wrong"] == 0 and r["detect"]["on"]["intact"] == 0 for r in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
