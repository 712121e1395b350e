"""Process-wide CPU settings that make torch inference several times faster on a few busy cores.

Measured here (2 cores shared with other jobs, EfficientNet-Lite0, 96 images, batch 16):

* OpenMP threads spin-wait for each other by default; when the cores are busy they burn their time
  slice spinning: preprocessing 64 images took 4.1 s instead of 0.4 s. ``OMP_WAIT_POLICY=PASSIVE``
  lets them sleep. libgomp reads it once, when torch loads, so it must be set before that.
* glibc returns every freed block over 32 MB (a batch's activations) to the OS, so each batch faults
  its memory in again: 1 M page faults, 1.8 s of kernel time, 8.3 s wall. Keeping freed memory for
  reuse (``mallopt``): 6 page faults, 0.07 s kernel time, 2.4 s wall. The cost: a process keeps up to
  :data:`KEEP_FREED_BYTES` of freed memory instead of returning it.

:func:`tune_for_busy_cpus` runs when the command line (:mod:`workflows.cli`) or the Celery app
(:mod:`workflows.celery_app`) is imported, before torch loads — not on ``import workflows``: changing
the allocator of a process that merely imports a library would be a surprise. From Python, call it
yourself first thing if you want the same speed. A value you set yourself (``OMP_WAIT_POLICY``,
``MALLOC_*``) wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: freed memory a process may keep for reuse instead of unmapping it (glibc M_MMAP/M_TRIM thresholds)
KEEP_FREED_BYTES = 512 * 1024 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers


def tune_for_busy_cpus() -> None:
    """Sleeping OpenMP threads and reused freed memory (see the module docstring); a no-op off glibc."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): keep the platform's allocator as it is
        return
    mallopt(_M_MMAP_THRESHOLD, KEEP_FREED_BYTES)
    mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_BYTES)
