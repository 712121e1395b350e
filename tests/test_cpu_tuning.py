"""Process-wide CPU settings the CLI and the Celery workers apply before torch loads: see workflows/cpu_tuning.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from workflows.cpu_tuning import tune_for_busy_cpus

# Allocate and free a batch-sized (64 MB) buffer 20 times, counting page faults before and after tuning.
FAULTS = """
import resource, torch
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        torch.empty(16 * 1024 * 1024).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
untuned = faults()
from workflows.cpu_tuning import tune_for_busy_cpus
tune_for_busy_cpus()
faults()  # the first round after tuning still maps the memory once
print(untuned, faults())
"""


def test_freed_batch_memory_is_reused_instead_of_faulted_in_again():
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", FAULTS], cwd=repo, capture_output=True, text=True, check=True, timeout=120
    )
    untuned, tuned = map(int, out.stdout.split())
    assert untuned > 20 * 10_000  # each round faults its 16k pages in again
    assert tuned < untuned / 20


def test_openmp_threads_sleep_unless_you_chose_otherwise(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    tune_for_busy_cpus()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    tune_for_busy_cpus()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
