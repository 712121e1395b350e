"""The same images extracted in-process vs through Celery workers on this machine.

    python bench/batch.py                 # N=160 hymenoptera images, EfficientNet-Lite0 (real weights), CPU
    python bench/batch.py --n 300 --repeats 5 --threads 2 --redis redis://127.0.0.1:6379/12

Measured, each on a cold feature store (features are deleted between runs), with the
same number of torch threads (``--threads``, default 1) in-process and in each worker:

* ``in-process``   — ``expert.run(paths)`` in this process: decode, preprocess, forward,
  batch 16. The baseline.
* ``embedded job`` — the same through the job API with no broker (``Jobs`` in-process:
  hashing, a DirectoryStore, job records on disk).
* ``1 worker``     — ``Jobs.submit`` to a real ``celery worker`` (prefork, 1 pool process),
  chunks of 16, a RedisStore and Redis job records; the time runs from ``submit`` until
  the last chunk is recorded (``finished_at`` in the record).
* ``2 workers``    — two such workers (two processes share this machine's cores).
* ``warm resubmit`` — the same images submitted again as a new job, 1 and 2 workers:
  every feature is a store hit (hash + Redis read per image, no model call).

Why one thread by default: this machine is a shared 2-core VM; when another process keeps
a core busy, a 2-thread forward pass stalls on its descheduled thread (measured here: 3.5x
slower than 1 thread), which would swamp the comparison. ``--threads 2`` on a quiet machine.

Per-task overhead = (queue time - in-process time) / chunks, from the median of the paired
ratios: what each queued task costs beyond the in-process work (publish, Redis round
trips, hashing, store writes, records). "Not inside tasks" is the queue time minus the
time the chunks spent running, per task (dispatch latency + record writes).
The workers start (and load the model) before any timing; each path is warmed up once.
In-process and queued runs alternate and each ratio is the median of back-to-back pairs
(robust to a shared CPU's drift). The last line is the headline.
"""

from __future__ import annotations

import argparse
import glob
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

import torch  # noqa: E402

from cache.redis_store import RedisStore  # noqa: E402
from experts import create_expert  # noqa: E402
from workflows.batch import Jobs  # noqa: E402
from workflows.batch.records import redis_client  # noqa: E402
from workflows.commands.batch import worker_argv  # noqa: E402
from workflows.settings import Settings  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "hymenoptera_data"
CHUNK = 16


class Worker:
    def __init__(self, name: str, url: str, threads: int, log: Path) -> None:
        env = {
            **os.environ,
            "EXPERTBRIDGE_BROKER_URL": url,
            "EXPERTBRIDGE_DEVICE": "cpu",
            "EXPERTBRIDGE_OFFLINE": "1",
            "EXPERTBRIDGE_WORKER_EXPERTS": "timm",
            "EXPERTBRIDGE_WORKER_THREADS": str(threads),
            "HF_HUB_OFFLINE": "1",
        }
        argv = worker_argv(["expertbridge.timm"], concurrency=1, pool="prefork", loglevel="WARNING", name=f"{name}@%h")
        self.log = log
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "celery"), "-A", "workflows.celery_app", *argv, "--without-gossip"],
            cwd=REPO,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def queued(jobs: Jobs, paths: list[str], *, cold: bool | None = None) -> tuple[float, dict]:
    t0 = time.time()
    job = jobs.submit(paths, chunk_size=CHUNK)
    st = jobs.wait(job, timeout=600, poll=0.05)
    assert st.state == "completed" and st.failed == 0, st
    chunks = jobs.chunks(job)
    misses = sum(c["misses"] for c in chunks.values())
    assert cold is None or misses == (len(paths) if cold else 0), f"{misses} misses, expected cold={cold}"
    return st.finished_at - t0, chunks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=160, help="images (from hymenoptera train+val)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per path")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in-process and per worker process")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/12", help="a Redis DB the bench may flush")
    args = ap.parse_args()

    paths = sorted(glob.glob(str(DATA / "*" / "*" / "*.jpg")))
    warm_paths, paths = paths[-CHUNK:], paths[: args.n]
    assert len(paths) == args.n, f"only {len(paths)} images under {DATA}"
    client = redis_client(args.redis)
    client.flushdb()
    store = RedisStore(client, namespace="expertbridge")
    settings = Settings(broker_url=args.redis, device="cpu", offline=True, batch_chunk_size=CHUNK)
    jobs = Jobs(settings)
    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    cores = os.cpu_count() or 1
    torch.set_num_threads(args.threads)
    print(
        f"{args.n} images, EfficientNet-Lite0 on CPU ({cores} cores), {args.threads} torch thread(s) in-process "
        f"and per worker, chunks of {CHUNK}, {args.repeats} repeats"
    )

    enc = create_expert("timm", **settings.expert_kwargs("timm")).load()
    enc.run(warm_paths)

    def in_process() -> float:
        t0 = time.perf_counter()
        results = enc.run(paths)
        elapsed = time.perf_counter() - t0
        assert all(r.ok for r in results)
        return elapsed

    def embedded() -> float:
        emb = Jobs(Settings(device="cpu", offline=True, jobs_dir=tmp / "jobs", store_dir=tmp / f"s{time.time_ns()}"))
        from workflows.batch import runner

        runner._EXPERTS["timm"] = enc
        t0 = time.perf_counter()
        job = emb.submit(paths, chunk_size=CHUNK)
        elapsed = time.perf_counter() - t0
        assert emb.status(job).state == "completed"
        return elapsed

    times: dict[str, list[float]] = {k: [] for k in ("in", "emb", "q1", "q2", "warm1", "warm2")}
    ratio1: list[float] = []  # per back-to-back pair: in-process time / queue time
    ratio2: list[float] = []
    residual: list[float] = []
    workers = []
    try:
        w = Worker("one", args.redis, args.threads, tmp / "one.log")
        workers.append(w)
        queued(jobs, warm_paths)  # waits for the worker to be up, warms it
        for _ in range(args.repeats):
            store.clear()
            times["in"].append(in_process())
            times["emb"].append(embedded())
            store.clear()
            elapsed, chunks = queued(jobs, paths, cold=True)
            times["q1"].append(elapsed)
            ratio1.append(times["in"][-1] / elapsed)
            residual.append((elapsed - sum(c["seconds"] for c in chunks.values())) / len(chunks))
        times["warm1"].append(queued(jobs, paths, cold=False)[0])
        w.stop()

        workers += [Worker(n, args.redis, args.threads, tmp / f"{n}.log") for n in ("two-a", "two-b")]
        store.clear()
        queued(jobs, warm_paths)
        queued(jobs, warm_paths + paths[:CHUNK])  # both workers warm (second chunk goes to the idle one)
        for _ in range(args.repeats):
            store.clear()
            times["q2"].append(queued(jobs, paths, cold=True)[0])
            times["in"].append(in_process())
            ratio2.append(times["in"][-1] / times["q2"][-1])
        times["warm2"].append(queued(jobs, paths, cold=False)[0])
    finally:
        for w in workers:
            w.stop()
        client.flushdb()

    med = {k: statistics.median(v) for k, v in times.items() if v}
    chunks = -(-args.n // CHUNK)
    rate = {k: args.n / v for k, v in med.items()}
    print(f"{'path':<28}{'seconds':>9}{'img/s':>9}{'vs in-process':>15}")
    labels = {
        "in": "in-process expert.run",
        "emb": "embedded job (no broker)",
        "q1": "queue, 1 worker",
        "q2": "queue, 2 workers",
        "warm1": "warm resubmit, 1 worker",
        "warm2": "warm resubmit, 2 workers",
    }
    for k, label in labels.items():
        print(f"{label:<28}{med[k]:>9.2f}{rate[k]:>9.1f}{rate[k] / rate['in']:>14.2f}x")
    overhead_ms = (args.n / (rate["in"] * statistics.median(ratio1)) - med["in"]) / chunks * 1000
    print(
        f"per-task overhead vs in-process: {overhead_ms:.0f} ms/task ({chunks} tasks); "
        f"queue time not inside tasks: {statistics.median(residual) * 1000:.0f} ms/task"
    )
    print(
        f"HEADLINE batch N={args.n}: 1 worker {statistics.median(ratio1):.2f}x in-process "
        f"({rate['q1']:.1f} vs {rate['in']:.1f} img/s), 2 workers {statistics.median(ratio2):.2f}x, "
        f"overhead {overhead_ms:.0f} ms/task, warm resubmit {med['warm1']:.2f}s (1 worker) / {med['warm2']:.2f}s (2)"
    )


if __name__ == "__main__":
    main()
