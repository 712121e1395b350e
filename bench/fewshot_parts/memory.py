"""Part (c) of ``bench/fewshot.py``: peak memory of building the cache and predicting, in fresh processes.

The child is ``bench/fewshot.py --_memory-child KIND`` itself (it prints :func:`memory_child`'s JSON)::

    print_memory(bench_memory(args), args)
"""

from __future__ import annotations

import gc
import json
import resource
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import torch

from cache.adapter import AdaptiveCache

from .common import mb, normalized

SCRIPT = Path(__file__).resolve().parents[1] / "fewshot.py"  # the command line that runs a memory child


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
        cmd = [sys.executable, str(SCRIPT), "--_memory-child", kind]
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
    return ("" if new_peak else "<=") + mb(delta)


def print_memory(mem: dict[str, dict[str, Any]], args) -> None:
    n = args.shots * args.classes
    theory = n * args.dim * 4
    print(
        f"theoretical: keys {n}×{args.dim}×4 B = {theory / 1e6:.1f} MB ({mb(theory)}); "
        f"one-hot values {n}×{args.classes}×4 B = {mb(n * args.classes * 4)}; "
        f"one affinity batch {args.batch}×{n}×4 B = {mb(args.batch * n * 4)}"
    )
    head = ("fresh process, 1 branch", "import", "+inputs", "build peak Δ", "held Δ", "predict peak Δ", "peak RSS")
    widths = (24, 9, 9, 13, 9, 15, 10)
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths))))
    print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    for kind, m in mem.items():
        ph = m["phases"]
        cells = (
            "AdaptiveCache" if kind == "cache" else "plain torch",
            mb(ph["import"]["VmRSS"]),
            mb(ph["inputs"]["VmRSS"] - ph["import"]["VmRSS"]),
            _phase_peak(m, "build", "inputs"),
            mb(ph["build"]["VmRSS"] - ph["inputs"]["VmRSS"]),
            _phase_peak(m, "predict", "build"),
            mb(m["ru_maxrss"]),
        )
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    c = mem["cache"]
    print(
        f"  import = RSS after importing torch + cache.adapter (torch alone is most of it); +inputs = the caller's "
        f"random keys, queries, labels ({mb(c['input_bytes'])} of tensors)\n"
        f"  build peak Δ / held Δ = highest RSS while building / what stays, above the +inputs state (cache "
        f"params+buffers: {mb(c['held_bytes'])}); predict peak Δ = highest RSS above the built state while "
        f"predicting {args.queries} queries in batches of {args.batch}, keeping argmax labels\n"
        f"  peak RSS = ru_maxrss of the child (whole process, import included; equals VmHWM "
        f"{mb(c['phases']['predict']['VmHWM'])}); tracemalloc (Python side only, torch's allocator is invisible "
        f"to it) peak: build {c['py_build_peak'] / 1024:.0f} KiB, predict {c['py_predict_peak'] / 1024:.0f} KiB"
    )
