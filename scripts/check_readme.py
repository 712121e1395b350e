"""Run the README's examples as a new user would: offline, in a scratch directory beside ``../shared``.

Every ```python and ```bash block of README.md is preceded by a marker line:

    <!-- readme-check: run -->              run it (in README order, all in one scratch directory)
    <!-- readme-check: skip: REASON -->     do not (installs things, needs Redis or Docker, takes minutes)

An unmarked block is an error, so each new example has to say which it is. Bash blocks run with
``set -e`` and what they ``export`` carries over to later blocks (one shell session, as a reader
would type them); ``expertbridge`` and ``python`` run this checkout's code with this interpreter.

    python scripts/check_readme.py              # every runnable block (several minutes: LLM examples)
    python scripts/check_readme.py --list       # the blocks, numbered
    python scripts/check_readme.py --only 1,2   # some of them

Exit code: 0 every block ran, 1 a block failed (its output is shown), 2 the README is not marked.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!--\s*readme-check:\s*(run|skip)\s*(?::\s*(.*?))?\s*-->\s*$")
FENCE = re.compile(r"^```(python|bash)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced example: its language, first line number in README.md, code, and the marker's verdict."""

    language: str
    line: int
    code: str
    action: str | None  # "run", "skip", or None when unmarked
    reason: str = ""


def parse_blocks(readme: str) -> list[Block]:
    """Every python/bash block of ``readme``, with the marker on the line before it (blank lines allowed)."""
    lines = readme.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        marker = MARKER.match(lines[j]) if j >= 0 else None
        end = next(k for k in range(i + 1, len(lines)) if lines[k].startswith("```"))
        blocks.append(
            Block(
                fence.group(1),
                i + 1,
                "\n".join(lines[i + 1 : end]) + "\n",
                marker.group(1) if marker else None,
                (marker.group(2) or "") if marker else "",
            )
        )
        i = end + 1
    return blocks


def scratch_session(shared: Path) -> tuple[Path, dict[str, str]]:
    """A scratch 'clone' directory with ``../shared`` beside it, and an offline environment whose
    ``expertbridge`` and ``python`` run this checkout."""
    root = Path(tempfile.mkdtemp(prefix="readme-check-"))
    work, bin_dir = root / "clone", root / "bin"
    work.mkdir()
    bin_dir.mkdir()
    (root / "shared").symlink_to(shared.resolve())
    for name, command in (("expertbridge", "-m workflows.cli"), ("python", "")):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" {command} "$@"\n')
        shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPERTBRIDGE_")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(REPO),
        HOME=str(root / "home"),  # "~/.cache/expertbridge/..." in the examples lands in the scratch area
        EXPERTBRIDGE_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        YOLO_OFFLINE="1",
        EXPERTBRIDGE_STORE_DIR=str(root / "store"),
        EXPERTBRIDGE_JOBS_DIR=str(root / "jobs"),
    )
    return work, env


def run_block(block: Block, work: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run one block in ``work``; a bash block's exported variables update ``env`` for the next blocks."""
    if block.language == "python":
        return subprocess.run(
            [sys.executable, "-c", block.code], cwd=work, env=env, capture_output=True, text=True, timeout=timeout
        )
    env_file = work.parent / "env.after"
    script = f"set -e\n{block.code}\nenv -0 > {env_file}\n"
    done = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode == 0:
        for entry in env_file.read_text().split("\0"):
            key, sep, value = entry.partition("=")
            if sep and key not in ("PWD", "OLDPWD", "SHLVL", "_"):
                env[key] = value
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument(
        "--shared", type=Path, default=Path(os.environ.get("EXPERTBRIDGE_SHARED", REPO.parent / "shared"))
    )
    parser.add_argument("--list", action="store_true", help="list the blocks and what would run")
    parser.add_argument("--only", help="comma-separated block numbers (from --list) to run")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per block")
    args = parser.parse_args(argv)

    blocks = parse_blocks(args.readme.read_text())
    unmarked = [b for b in blocks if b.action is None]
    for b in unmarked:
        print(f"README.md:{b.line}: a {b.language} block without a readme-check marker", file=sys.stderr)
    if unmarked:
        return 2
    if args.list:
        for n, b in enumerate(blocks, 1):
            print(f"{n:2d}  line {b.line:4d}  {b.language:6s} {b.action}{': ' + b.reason if b.reason else ''}")
        return 0
    chosen = {int(n) for n in args.only.split(",")} if args.only else None
    runnable = [(n, b) for n, b in enumerate(blocks, 1) if b.action == "run" and (chosen is None or n in chosen)]
    if not args.shared.is_dir():
        print(f"{args.shared} is missing: the examples need ../shared beside the clone", file=sys.stderr)
        return 2
    work, env = scratch_session(args.shared)
    print(f"running {len(runnable)} README blocks in {work}", file=sys.stderr)
    for n, block in runnable:
        start = time.perf_counter()
        done = run_block(block, work, env, args.timeout)
        seconds = time.perf_counter() - start
        status = "ok" if done.returncode == 0 else f"FAILED (exit {done.returncode})"
        print(f"[{n}] README.md:{block.line} {block.language}: {status} in {seconds:.1f}s", file=sys.stderr)
        if done.returncode != 0:
            print(block.code, done.stdout[-4000:], done.stderr[-4000:], sep="\n--------\n", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
