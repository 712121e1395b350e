"""A cold, a warm and a refitted ``expertbridge fewshot eval``, side by side, and where the warm one's time goes.

    python bench/fewshot_warm.py                           # DTD-10, the CLI's defaults (5 methods, Lite0)
    python bench/fewshot_warm.py --args "--methods auto,cache,gda,linear --experts timm.lite0-multilevel"
    python bench/fewshot_warm.py --data ../shared/data/hymenoptera_data

Each pass is the real command in a fresh process (interpreter start, imports and report included),
on one empty temporary feature store:

* cold: empty store and sweep memo: every image encoded, every run fitted;
* warm: the same command again: features read from the store, every run read from the sweep memo;
* refit: ``--refit``: features read, every run fitted again (the warm run before the sweep memo existed);
* floor: ``python -c "import torch, workflows.report"``, what any warm run pays before it reads a byte.

All four print the same accuracies (checked). The last line holds the headline ratios.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dtd10"


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{shlex.join(cmd)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def accuracies(stdout: str) -> list[str]:
    """The table's rows and the verdict line: what must not change between passes."""
    return [line for line in stdout.splitlines() if "%" in line and not line.startswith("runs:")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--args", default="", help="more `fewshot eval` options, as one string")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "EXPERTBRIDGE_STORE_DIR": f"{tmp}/store", "EXPERTBRIDGE_OFFLINE": "1"}
        base = [sys.executable, "-m", "workflows.cli", "fewshot", "eval", str(args.data), "--report", f"{tmp}/r"]
        base += shlex.split(args.args)
        times, outputs = {}, {}
        for name, extra in (("cold", []), ("warm", []), ("refit", ["--refit"])):
            times[name], outputs[name] = timed(base + extra, env)
            print(f"{name:<6} {times[name]:6.1f} s   {shlex.join(['expertbridge', *base[3:], *extra])}", flush=True)
        times["floor"], _ = timed([sys.executable, "-c", "import torch, workflows.report"], env)
        print(f"{'floor':<6} {times['floor']:6.1f} s   import torch and the report's matplotlib")
    same = accuracies(outputs["cold"]) == accuracies(outputs["warm"]) == accuracies(outputs["refit"])
    if not same:
        print("the passes printed different accuracies:", *(accuracies(o) for o in outputs.values()), sep="\n")
        return 1
    print(
        f"cold/warm {times['cold'] / times['warm']:.1f}x, refit/warm {times['refit'] / times['warm']:.1f}x, "
        f"warm {times['warm']:.1f} s of which the import floor {times['floor']:.1f} s; same accuracies: {same}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
