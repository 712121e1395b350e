"""The hostile-input corpus (tests/hostile.py) end to end, as a user runs it: ``expertbridge run``,
``fewshot predict`` and ``batch submit`` (embedded, and queued through Redis and a real worker).

Each command is a separate process, so its peak memory is its own (``os.wait4``). For every command:
every hostile item gets its own clear reason, every good neighbour succeeds, the process exits with
"some items failed" (1) rather than crashing, finishes within its deadline, and peaks less than 1 GB
above the same command run on the good images alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile import HostileCase, write_corpus

from experts.sources import local_path

pytestmark = pytest.mark.slow

TEST_REDIS = os.environ.get("EXPERTBRIDGE_TEST_BATCH_REDIS", "redis://127.0.0.1:6379/13")
#: peak-RSS growth a whole hostile batch may cause over the same command on its good images
MAX_EXTRA_RSS_MB = 1024
#: wall-clock bound of one command over the corpus (three 64 MP images decode in it)
DEADLINE_S = 240


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[HostileCase]]:
    root = tmp_path_factory.mktemp("hostile")
    return root, write_corpus(root / "corpus")


@pytest.fixture(scope="module")
def good_only(corpus, tmp_path_factory) -> Path:
    """The corpus's good images alone: the memory baseline of each command."""
    folder = tmp_path_factory.mktemp("good")
    for case in corpus[1]:
        if case.reason is None and not case.name.startswith("square"):
            os.link(os.fsencode(case.path), os.path.join(os.fsencode(folder), os.path.basename(os.fsencode(case.path))))
    return folder


def _sources(corpus) -> list[str]:
    root, cases = corpus
    # the corpus folder (expanded by the command) + the cases that live outside it or are not listed
    return [str(root / "corpus"), "/dev/zero", "/dev/null", str(root / "corpus" / "absent.jpg")]


def _checked(cases: list[HostileCase]) -> dict[bytes, HostileCase]:
    """Cases whose outcome is pinned: root reads a chmod-000 file, so that one is not."""
    return {os.fsencode(c.path): c for c in cases if not c.needs_unprivileged and c.name != "dir.jpg"}


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPERTBRIDGE_")}
    env.update(
        EXPERTBRIDGE_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        EXPERTBRIDGE_DEVICE="cpu",
        EXPERTBRIDGE_STORE_DIR=str(tmp / "store"),
        EXPERTBRIDGE_JOBS_DIR=str(tmp / "jobs"),
        XDG_CONFIG_HOME=str(tmp / "config"),
        **extra,
    )
    return env


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, float, float]:
    """Run ``expertbridge ARGS`` in its own process: exit code, output, seconds, peak RSS in MB."""
    start = time.monotonic()
    with open(cwd / "cli.log", "w+b") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workflows.cli", *args], env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = start + DEADLINE_S
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"expertbridge {' '.join(args[:2])} did not finish in {DEADLINE_S} s")
            time.sleep(0.1)
        log.seek(0)
        output = log.read().decode(errors="replace")
    return os.waitstatus_to_exitcode(status), output, time.monotonic() - start, usage.ru_maxrss / 1024


def _assert_rows(rows: list[dict], cases: list[HostileCase], reason_of, ok_of) -> None:
    """One row per listed case (plus the explicit ones), each with the reason the corpus expects."""
    pinned = _checked(cases)
    seen: dict[bytes, dict] = {}
    for row in rows:
        seen[os.fsencode(local_path(row["source"]))] = row
    wrong = []
    for path, case in pinned.items():
        row = seen.get(path)
        if row is None:
            if case.listed or case.path.startswith("/dev/") or case.name == "absent.jpg":
                wrong.append(f"{case.name}: no row")
            continue
        want_ok = case.reason is None
        if ok_of(row) != want_ok or (not want_ok and reason_of(row) != case.reason):
            wrong.append(f"{case.name}: expected {case.reason or 'ok'}, got {reason_of(row)} / ok={ok_of(row)}")
    assert not wrong, "\n".join(wrong)
    assert len(seen) == len(rows)  # no item twice


def _baseline_then_corpus(args_for, env, tmp: Path, corpus, good_only) -> tuple[int, str, float]:
    """Run the command on the good images, then on the corpus; return the corpus run, check memory."""
    (tmp / "base").mkdir()
    (tmp / "hostile").mkdir()
    code, out, _, base_mb = _cli(args_for([str(good_only)], tmp / "base"), env, tmp / "base")
    assert code == 0, out
    code, out, seconds, peak_mb = _cli(args_for(_sources(corpus), tmp / "hostile"), env, tmp / "hostile")
    assert "Traceback" not in out, out
    assert peak_mb - base_mb < MAX_EXTRA_RSS_MB, f"peak {peak_mb:.0f} MB vs {base_mb:.0f} MB on good images"
    print(f"\n{args_for([], tmp)[0]}: {seconds:.1f} s, peak {peak_mb:.0f} MB (good images alone {base_mb:.0f} MB)")
    return code, out, seconds


def test_run_reports_each_hostile_item_and_keeps_the_good_ones(corpus, good_only, tmp_path):
    env = _env(tmp_path)
    code, out, _ = _baseline_then_corpus(
        lambda srcs, d: ["run", "timm", *srcs, "--out", str(d / "rows.jsonl")], env, tmp_path, corpus, good_only
    )
    assert code == 1, out  # some items failed
    rows = [json.loads(line) for line in (tmp_path / "hostile" / "rows.jsonl").read_text().splitlines()]
    _assert_rows(rows, corpus[1], lambda r: r["reason"], lambda r: r["evidence"] is not None)


def test_fewshot_predict_reports_each_hostile_item_and_labels_the_good_ones(
    corpus, good_only, tmp_path, efficientnet, hymenoptera
):
    from workflows.datasets import few_shot_splits, load_splits
    from workflows.fewshot import FewShotClassifier

    support, _, _ = few_shot_splits(load_splits(hymenoptera), 2, seed=0)
    model = FewShotClassifier([efficientnet], augment_views=1).fit(support).save(tmp_path / "model")
    env = _env(tmp_path)
    code, out, _ = _baseline_then_corpus(
        lambda srcs, d: ["fewshot", "predict", str(model), *srcs, "--out", str(d / "preds.jsonl")],
        env,
        tmp_path,
        corpus,
        good_only,
    )
    assert code == 1, out
    rows = [json.loads(line) for line in (tmp_path / "hostile" / "preds.jsonl").read_text().splitlines()]
    _assert_rows(rows, corpus[1], lambda r: r.get("reason"), lambda r: r["label"] is not None)
    assert {r["label"] for r in rows if r["label"]} <= {"ants", "bees"}


def _batch_rows(env: dict, cwd: Path, job: str) -> list[dict]:
    code, out, _, _ = _cli(["batch", "results", job, "--out", str(cwd / "rows.jsonl")], env, cwd)
    assert code == 0, out
    return [json.loads(line) for line in (cwd / "rows.jsonl").read_text().splitlines()]


def test_embedded_batch_submit_fails_each_hostile_item_alone(corpus, good_only, tmp_path):
    env = _env(tmp_path)
    code, out, _ = _baseline_then_corpus(
        lambda srcs, d: ["batch", "submit", *srcs, "--experts", "timm", "--job-id", f"hostile-{d.name}"],
        env,
        tmp_path,
        corpus,
        good_only,
    )
    assert code in (0, 1), out  # the job ran to the end: its items carry the failures
    rows = _batch_rows(env, tmp_path, "hostile-hostile")
    _assert_rows(rows, corpus[1], lambda r: r.get("reason"), lambda r: r["ok"])


def test_queued_batch_submit_fails_each_hostile_item_alone_and_the_worker_survives(corpus, tmp_path, redis_db):
    env = _env(tmp_path, EXPERTBRIDGE_BROKER_URL=TEST_REDIS, EXPERTBRIDGE_BATCH_CHUNK_SIZE="8")
    worker_log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [sys.executable, "-m", "workflows.cli", "worker", "--experts", "timm", "-c", "1"],
        env=env,
        cwd=tmp_path,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    try:
        code, out, seconds, _ = _cli(
            ["batch", "submit", *_sources(corpus), "--experts", "timm", "--job-id", "hostile-q", "--wait"],
            env,
            tmp_path,
        )
        assert "Traceback" not in out, out
        assert code in (0, 1), out
        rows = _batch_rows(env, tmp_path, "hostile-q")
        _assert_rows(rows, corpus[1], lambda r: r.get("reason"), lambda r: r["ok"])
        assert worker.poll() is None, "the worker died on the corpus"
        # and it still serves the next job
        code, out, _, _ = _cli(
            ["batch", "submit", *_sources(corpus)[:1], "--experts", "timm", "--job-id", "after-q", "--wait"],
            env,
            tmp_path,
        )
        assert code in (0, 1), out
        print(f"\nqueued corpus: {seconds:.1f} s")
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        worker_log.close()
