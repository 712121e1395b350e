"""User-facing jobs (few-shot, reasoning, batch), settings, the Celery app and the CLI."""

from workflows.cpu_tuning import tune_for_busy_cpus

tune_for_busy_cpus()  # before torch loads: see workflows/cpu_tuning.py (several times faster on busy cores)
