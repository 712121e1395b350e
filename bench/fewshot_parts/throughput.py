"""Part (a) of ``bench/fewshot.py``: ``AdaptiveCache`` predict throughput next to the same logits in plain torch.

::

    row = bench_setting(make_setting(two_branch=False, args=args, seed=0), args)
    print_throughput([row], args)
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cache.adapter import AdaptiveCache

from .common import normalized, prototypes, standardize, timed


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
                    times[k].append(timed(lambda fn=fns[k], batch=batch: fn(batch)) / n)
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
