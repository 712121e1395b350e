"""The few-shot cache head's speed and memory, and what a warm feature store saves.

    python bench/fewshot.py                  # defaults below, a few minutes on 2 CPU cores
    python bench/fewshot.py --quick          # smoke run: smaller sizes, one repeat
    python bench/fewshot.py --queries 2000 --classes 100 --images 40 --no-two-branch

Three parts, printed side by side:

(a) predict throughput of ``AdaptiveCache`` (what ``FewShotClassifier.logits`` calls, under
    ``torch.no_grad``) for ``--queries`` queries against a ``--shots`` × ``--classes`` cache
    (default 16 × 1,000 = 16,000 keys, D = 1280 as EfficientNet-Lite0), in batches of
    ``--batch``, next to the same computation written directly in torch on the same tensors:

    * setting ``1 branch``: Tip-Adapter, fusion "sum", no prior. The plain side is
      ``α · exp(-β (1 - q Kᵀ)) @ L`` with ``L`` the one-hot values — the minimal
      Tip-Adapter computation (q Kᵀ, then @ one-hot);
    * setting ``2 branches`` (1280 + ``--dim2``): CaFo adaptive fusion with a prototype
      prior on both branches (what ``FewShotClassifier`` builds for two experts without
      CLIP). The plain side writes prior, affinities, standardization, agreement softmax
      and the weighted sum out by hand.

    Features are random L2-normalized vectors (in real use they come from the store, so
    this times the cache head only). Both sides' logits are checked equal (allclose) first.
    The ``scatter`` column (1 branch only, to keep the run short) is for information: the
    same logits with the one-hot matmul replaced by ``index_add_`` over the labels (a
    cheaper algorithm, not framework cost).

(b) cold passes of real images (hymenoptera val) through ``run_through_store`` with the
    real EfficientNet-Lite0 expert, each on a fresh empty ``DirectoryStore`` in a temp dir
    (``--cold-repeats``, median reported), then warm passes over the same images on the
    last store: wall times, hits/misses and the speedup. The model is loaded and warmed up
    on two *other* images (train split, no store) first, so "cold" means an empty store,
    not a first-ever forward. Image files are read from disk on both passes (likely from
    the OS page cache); the warm pass hashes them and reads store records, it does not
    decode them.

(c) peak memory of building the 16k-key cache (1 branch) and predicting all queries,
    measured in a fresh subprocess (nothing else loaded: no model, no part (a) tensors):
    ``resource.getrusage(...).ru_maxrss`` for the whole child, and ``/proc/self/status``
    (VmRSS now, VmHWM peak so far) after each phase — import, inputs, build, predict — for
    the increments. The child is forked by a small ``sh``, not by this process: Linux
    carries the spawner's RSS high-water mark into an exec'd child's ru_maxrss, and this
    process holds torch and a model by then. tracemalloc shows the Python-side share
    (torch's own allocator is invisible to it). The same is done for the plain-torch
    computation, for comparison.

Timing (a): each path is warmed up with ``--warmup`` batches; then, ``--repeats`` times over
all batches, each batch goes through every path back to back (order rotated per batch), one
timed sample per path and batch. q/s is from the median per-batch time; ratios are medians
of the per-batch paired ratios (robust to other processes sharing the CPU; the load average
is printed). Threads: torch's default. Seeds fixed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402

# The parts live in bench/fewshot_parts/ (one module per part); this script is their command line.
from bench.fewshot_parts.common import MIB  # noqa: E402
from bench.fewshot_parts.memory import bench_memory, memory_child, print_memory  # noqa: E402
from bench.fewshot_parts.store import DATA, StoreResult, bench_store, print_store  # noqa: E402
from bench.fewshot_parts.throughput import ThroughputRow, bench_setting, make_setting, print_throughput  # noqa: E402

TARGET_RATIO = 1.10  # cache time / plain torch time
TARGET_SPEEDUP = 50.0  # cold store pass / warm store pass


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--queries", type=int, default=None, help="queries predicted per timed pass (default 10000)")
    p.add_argument("--shots", type=int, default=16, help="support images per class (default 16)")
    p.add_argument("--classes", type=int, default=None, help="classes (default 1000)")
    p.add_argument("--dim", type=int, default=1280, help="feature size of branch 1 (default 1280, EfficientNet-Lite0)")
    p.add_argument("--dim2", type=int, default=512, help="feature size of branch 2 (default 512)")
    p.add_argument("--batch", type=int, default=1000, help="queries per cache call (default 1000)")
    p.add_argument("--repeats", type=int, default=None, help="timed passes over all batches per path (default 2)")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches per path first (default 2)")
    p.add_argument("--no-two-branch", action="store_true", help="skip the 2-branch adaptive setting")
    p.add_argument("--images", type=int, default=None, help="val images for the store passes, 0 = all (default all)")
    p.add_argument("--cold-repeats", type=int, default=2, help="cold passes, each on a fresh store (default 2)")
    p.add_argument("--warm-repeats", type=int, default=3, help="warm store passes, median reported (default 3)")
    p.add_argument("--data", type=Path, default=DATA, help=f"ImageFolder root with val/ (and train/) (default {DATA})")
    p.add_argument("--skip", nargs="+", default=[], choices=("throughput", "store", "memory"), help="parts to skip")
    p.add_argument("--quick", action="store_true", help="smoke run: 2000 queries, 100 classes, 1 repeat, 24 images")
    p.add_argument("--_memory-child", dest="memory_child", choices=("cache", "plain"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick = {"queries": 2000, "classes": 100, "repeats": 1, "images": 24}
    default = {"queries": 10000, "classes": 1000, "repeats": 2, "images": 0}
    for key in default:
        if getattr(args, key) is None:
            setattr(args, key, (quick if args.quick else default)[key])
    if min(args.queries, args.shots, args.classes, args.dim, args.dim2, args.batch, args.repeats) < 1:
        p.error("sizes and --repeats must be >= 1")
    if args.warmup < 0 or args.warm_repeats < 1 or args.cold_repeats < 1 or args.images < 0:
        p.error("--warmup and --images must be >= 0, --cold-repeats and --warm-repeats >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args)))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    np.random.seed(0)
    t_start = time.perf_counter()
    print(
        f"expertbridge few-shot cache bench — CPU, torch {torch.__version__}, {torch.get_num_threads()} threads "
        f"(default), repeats={args.repeats}, warmup={args.warmup} batches, seeds fixed; "
        f"load average {os.getloadavg()[0]:.2f} (1 min) at start"
    )

    rows: list[ThroughputRow] = []
    if "throughput" not in args.skip:
        print(f"\n(a) predict throughput, {args.queries} queries vs {args.shots}×{args.classes} keys", flush=True)
        for i, two in enumerate([False] if args.no_two_branch else [False, True]):
            t0 = time.perf_counter()
            setting = make_setting(two, args, seed=i)
            rows.append(bench_setting(setting, args))
            print(f"  {setting.name}: benched in {time.perf_counter() - t0:.0f}s", flush=True)
            del setting
            gc.collect()
        print()
        print_throughput(rows, args)

    store: StoreResult | None = None
    if "store" not in args.skip:
        print("\n(b) feature store: cold vs warm pass, real EfficientNet-Lite0, fresh DirectoryStore", flush=True)
        store = bench_store(args)
        print_store(store)

    mem = None
    if "memory" not in args.skip:
        print("\n(c) peak memory of the cache step, measured in fresh subprocesses", flush=True)
        mem = bench_memory(args)
        print_memory(mem, args)

    print(f"\ntotal {time.perf_counter() - t_start:.0f}s; load average {os.getloadavg()[0]:.2f} (1 min) at end")
    notes = []
    parts = []
    if rows:
        r = rows[0]
        parts.append(
            f"cache predict {r.queries / 1000:g}k×{r.keys / 1000:g}k keys {r.qps('cache'):.0f} q/s "
            f"(matmul {r.qps('plain'):.0f} q/s, ratio {r.ratio('plain'):.2f})"
        )
        if len(rows) > 1:
            parts[-1] += f", 2-branch adaptive ratio {rows[1].ratio('plain'):.2f}"
        notes += [f"{x.setting}: cache/plain {x.ratio('plain'):.2f}" for x in rows if x.ratio("plain") > TARGET_RATIO]
    if store is not None:
        parts.append(f"warm store {store.speedup:.0f}× faster than cold ({store.n_images} imgs)")
        if store.speedup < TARGET_SPEEDUP:
            notes.append(f"warm store speedup {store.speedup:.0f}× < {TARGET_SPEEDUP:.0f}×")
    if mem is not None:
        m = mem["cache"]
        above = m["ru_maxrss"] - m["phases"]["import"]["VmRSS"]
        parts.append(f"peak RSS {m['ru_maxrss'] / MIB:.0f} MB ({above / MIB:.0f} MB above import torch)")
    if notes:
        print("over target: " + "; ".join(notes))
    print("headline: " + " | ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
