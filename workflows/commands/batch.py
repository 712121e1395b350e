"""``expertbridge batch submit|status|results|cancel|list`` and ``expertbridge worker``.

One rule for the broker: with ``EXPERTBRIDGE_BROKER_URL`` set, ``submit`` queues the chunks on
Celery and returns, and ``worker`` serves them; without it, ``submit`` runs the job here,
in-process, with a progress bar, and ``worker`` refuses to start (it would have nothing to serve).
The job id goes to stdout (for scripts), everything else to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column, Table

from experts import ConfigError  # experts.errors only: cheap
from workflows.commands.options import OptionalImagesArg
from workflows.commands.root import command_group, console, settings_of
from workflows.rendering import markup
from workflows.settings import Settings

if TYPE_CHECKING:
    from workflows.batch.jobs import Jobs
    from workflows.batch.status import JobStatus

app = command_group(help="Batch jobs: many images in chunks, on Celery workers or in-process.")


def _bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[red]{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _watch(jobs: Jobs, job_id: str, poll: float = 0.5) -> JobStatus:
    with _bar() as bar:
        task = bar.add_task(job_id, total=None, failed=0)

        def update(st: JobStatus) -> None:
            waiting = sum(st.waiting.values())
            label = f"{job_id} {st.state}" + (f" ({waiting} tasks queued)" if waiting and not st.done else "")
            bar.update(task, total=st.total, completed=st.done, failed=st.failed, description=label)

        return jobs.wait(job_id, poll=poll, on_update=update)


def _print_status(st: JobStatus) -> None:
    table = Table(show_header=False, box=None)
    table.add_row("job", st.id)
    table.add_row("task", f"{st.task} ({', '.join(st.lanes)}) — {st.mode}")
    table.add_row("state", st.state)
    table.add_row("progress", f"{st.done}/{st.total} done, {st.succeeded} ok, {st.failed} failed")
    table.add_row("chunks", f"{st.n_chunks} ({st.deliveries} deliveries)")
    if st.elapsed is not None:
        rate = f", {st.done / st.elapsed:.1f} items/s" if st.elapsed > 0 and st.done else ""
        table.add_row("time", f"{st.elapsed:.1f}s{rate}")
    for queue, n in st.waiting.items():
        hint = f" — start a worker: expertbridge worker --queues {queue}" if n and not st.done else ""
        table.add_row("waiting", f"{n} tasks in {queue}{hint}")
    if st.error:
        table.add_row("[red]job error", markup(st.error))
    if st.state == "submitting":
        table.add_row("note", f"queuing was interrupted; resume with: expertbridge batch submit ... --job-id {st.id}")
    Console().print(table)
    if st.errors:
        errors = Table("item", "source", "reason", "error", title=f"failed items (first {len(st.errors)})")
        for item, e in st.errors.items():
            errors.add_row(*(markup(v) for v in (item, e.get("source"), e.get("reason"), str(e.get("error"))[:120])))
        Console().print(errors)


@app.command("submit")
def submit_cmd(
    ctx: typer.Context,
    inputs: OptionalImagesArg = None,
    manifest: Annotated[Path | None, typer.Option(help="file listing inputs: .txt lines, .jsonl/.csv 'path'")] = None,
    experts: Annotated[str | None, typer.Option(help="comma-separated experts (extract: one lane each; timm)")] = None,
    task: Annotated[str, typer.Option(help="extract, classify or reason")] = "extract",
    model: Annotated[Path | None, typer.Option(help="classify: a saved few-shot classifier directory")] = None,
    question: Annotated[str | None, typer.Option(help="reason: the question asked of every image")] = None,
    chunk_size: Annotated[int | None, typer.Option(help="images per task (default: settings.batch_chunk_size)")] = None,
    job_id: Annotated[str | None, typer.Option(help="name the job; an existing id resumes it")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="queued mode: follow until done")] = False,
) -> None:
    """Submit images as a batch job; prints the job id (in-process: exit 1 if any item failed)."""
    from workflows.batch.job_ids import check_job_id, new_job_id
    from workflows.batch.jobs import Jobs

    settings = settings_of(ctx)
    jobs = Jobs(settings)
    params = {}
    if model is not None:
        params["model"] = str(model)
    if question is not None:
        params["question"] = question
    names = [n.strip() for n in (experts or "").split(",") if n.strip()]
    job_id = new_job_id() if job_id is None else check_job_id(job_id)  # before anything is printed or written
    request = {"manifest": manifest, "experts": names, "task": task, "params": params, "chunk_size": chunk_size}
    if jobs.embedded:
        console.print(
            f"job {job_id}, in-process (no EXPERTBRIDGE_BROKER_URL); if interrupted, resubmit with "
            f"--job-id {job_id} to resume"
        )
        with _bar() as bar:
            handle = bar.add_task("in-process", total=None, failed=0)

            def progress(done: int, failed: int, total: int) -> None:
                bar.update(handle, completed=done, total=total, failed=failed)

            job = jobs.submit(inputs, **request, job_id=job_id, progress=progress)
    else:
        job = jobs.submit(inputs, **request, job_id=job_id)
        console.print(f"queued job {job}; follow it with: expertbridge batch status {job} --watch")
        if wait:
            _watch(jobs, job)
    st = jobs.status(job)
    print(job)
    console.print(markup(st))
    if st.failed:
        console.print(f"[yellow]{st.failed} item(s) failed[/yellow]; see: expertbridge batch status {job}")
        raise typer.Exit(1)


@app.command("status")
def status_cmd(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="job id (from submit or `batch list`)")],
    watch: Annotated[bool, typer.Option("--watch", "-w", help="progress bar until the job finishes")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
) -> None:
    """State, progress (done/failed/total), timing and failed items of a job."""
    from workflows.batch.jobs import Jobs

    jobs = Jobs(settings_of(ctx))
    st = _watch(jobs, job_id) if watch else jobs.status(job_id)
    if as_json:
        print(json.dumps(st.to_dict(), indent=2))
    else:
        _print_status(st)


@app.command("results")
def results_cmd(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="job id")],
    out: Annotated[Path | None, typer.Option(help=".jsonl or .parquet file; default: JSONL on stdout")] = None,
    format: Annotated[str | None, typer.Option(help="jsonl or parquet (default: from --out's suffix)")] = None,
    evidence: Annotated[
        bool, typer.Option(help="include each item's evidence (vectors, boxes) from the store")
    ] = False,
) -> None:
    """Export a job's results: one row per item (and expert): store key or result, error, reason."""
    from workflows.batch.jobs import Jobs

    jobs = Jobs(settings_of(ctx))
    st = jobs.status(job_id, errors=0)
    if out is None:
        if format not in (None, "jsonl"):
            raise ConfigError("to write Parquet, give --out FILE.parquet")
        for row in jobs.results(job_id, evidence=evidence):
            sys.stdout.write(json.dumps(row) + "\n")
        return
    n = jobs.export(job_id, out, format=format, evidence=evidence)
    note = "" if st.finished else f" (job still {st.state}: {st.done}/{st.total} so far)"
    console.print(f"{n} rows → {markup(out)}{note}")


@app.command("cancel")
def cancel_cmd(ctx: typer.Context, job_id: Annotated[str, typer.Argument(help="job id")]) -> None:
    """Cancel a job: chunks not started yet are skipped; resubmit with --job-id to resume."""
    from workflows.batch.jobs import Jobs

    st = Jobs(settings_of(ctx)).cancel(job_id)
    console.print(f"cancelled {job_id}: {st.done}/{st.total} items were done")


@app.command("list")
def list_cmd(ctx: typer.Context) -> None:
    """Known jobs, oldest first."""
    from workflows.batch.jobs import Jobs

    statuses = Jobs(settings_of(ctx)).list_jobs()
    table = Table("task", "state", "done", "created")
    table.columns.insert(0, Column("job", no_wrap=True))
    for st in statuses:
        created = time.strftime("%m-%d %H:%M", time.localtime(st.created_at))
        done = f"{st.done}/{st.total}" + (f" ({st.failed} failed)" if st.failed else "")
        table.add_row(st.id, st.task, st.state, done, created)
    Console().print(table)


# --------------------------------------------------------------------------- worker


def worker_argv(queues: list[str], *, concurrency: int, pool: str, loglevel: str, name: str | None) -> list[str]:
    """The ``celery worker`` arguments ``expertbridge worker`` runs with."""
    argv = ["worker", "-Q", ",".join(queues), "-c", str(concurrency), "--pool", pool, "-l", loglevel]
    if name:
        argv += ["-n", name]
    return argv


def check_experts(names: list[str], settings: Settings) -> None:
    """Fail before starting if this machine cannot build an expert (weights missing, unknown name).

    Resolves weights (and fetches a YOLO tag such as ``yolov8n.pt`` now, when online); models
    load later, in each worker process (after the fork)."""
    from experts import create_expert, get_expert_class

    for name in names:
        if name == "reason":
            continue
        get_expert_class(name)
        expert = create_expert(name, **settings.expert_kwargs(name))
        if name == "yolo" and expert.weights.kind == "tag":
            _fetch_yolo_weights(expert)


def _fetch_yolo_weights(expert) -> None:
    """Download a YOLO tag's file now (no model is built), so that a worker that cannot get it never
    starts: otherwise it would take chunks and fail every item as ``expert_unavailable``."""
    from ultralytics.utils.downloads import attempt_download_asset

    from experts import WeightsNotFoundError

    tag = expert.weights.value
    try:
        found = Path(attempt_download_asset(tag)).is_file()
        problem = "the download left no file"
    except Exception as err:  # noqa: BLE001 - any failure to fetch means: refuse to start
        found, problem = False, f"{type(err).__name__}: {str(err).strip()}"
    if not found:
        raise WeightsNotFoundError(
            f"yolo: weights {tag!r} are not on this machine and could not be fetched ({problem}). {expert.offline_hint}"
        )


def default_worker_name(names: list[str], queues: list[str]) -> str:
    """A node name unique per process (Celery warns about duplicates when several workers share a host)."""
    what = "-".join(names) or "-".join(q.rpartition(".")[2] for q in queues) or "worker"
    return f"expertbridge-{what}-{os.getpid()}@%h"


def worker_cmd(
    ctx: typer.Context,
    experts: Annotated[str, typer.Option(help="experts whose queues this worker serves (and preloads)")] = "timm",
    queues: Annotated[str | None, typer.Option(help="extra or explicit queues, comma-separated")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="worker processes")] = 1,
    pool: Annotated[str, typer.Option(help="prefork (default), solo or threads")] = "prefork",
    threads: Annotated[
        int | None, typer.Option(help="torch threads per process (default: cores / concurrency)")
    ] = None,
    loglevel: Annotated[str, typer.Option(help="celery log level")] = "INFO",
    name: Annotated[
        str | None, typer.Option(help="worker node name (default: expertbridge-EXPERTS-PID@%h), e.g. gpu1@%h")
    ] = None,
    check: Annotated[bool, typer.Option("--check/--no-check", help="refuse to start without the weights")] = True,
) -> None:
    """Run a Celery worker for batch jobs, on the queues of the given experts (expertbridge.EXPERT).

    Needs EXPERTBRIDGE_BROKER_URL (without it, `batch submit` runs jobs in-process and a worker would
    serve nothing) and, unless --no-check, the weights of its experts on this machine.
    """
    from workflows.batch.queues import queue_for

    settings = settings_of(ctx)
    if not settings.broker_url:
        raise ConfigError(
            "set EXPERTBRIDGE_BROKER_URL (e.g. redis://127.0.0.1:6379/0) to run a worker: without a broker, "
            "`expertbridge batch submit` runs jobs in-process and no worker is needed"
        )
    names = [n.strip() for n in experts.split(",") if n.strip()]
    chosen = [queue_for(n, settings) for n in names] + [q.strip() for q in (queues or "").split(",") if q.strip()]
    if not chosen:
        raise ConfigError("give --experts or --queues: a worker with no queue would do nothing")
    if check:
        check_experts(names, settings)
    name = name or default_worker_name(names, chosen)
    os.environ["EXPERTBRIDGE_WORKER_EXPERTS"] = ",".join(names)
    if threads is not None:
        os.environ["EXPERTBRIDGE_WORKER_THREADS"] = str(threads)
    console.print(markup(f"worker on {', '.join(dict.fromkeys(chosen))} (experts: {', '.join(names) or 'none'})"))
    from workflows.celery_app import app as celery_app

    celery_app.worker_main(
        worker_argv(list(dict.fromkeys(chosen)), concurrency=concurrency, pool=pool, loglevel=loglevel, name=name)
    )
