"""User-facing jobs (few-shot, reasoning, batch), settings, the Celery app and the CLI."""

import os

# OpenMP threads that spin-wait for each other make torch several times slower when the cores are busy
# (measured on 2 loaded cores: preprocessing 64 images 4.1 s -> 0.4 s, their forward pass 23 s -> 5.5 s,
# and a quarter of the CPU time). Let them sleep instead. libgomp reads this once, when torch loads: it
# takes effect for the CLI and workers (this package loads first) and never overrides a value you set.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
