"""Job ids: the ones :func:`new_job_id` makes, and the rule any id (given with ``--job-id``) must follow.

>>> check_job_id("nightly-2025.01")
'nightly-2025.01'
>>> bool(JOB_ID_PATTERN.fullmatch(new_job_id()))
True
"""

from __future__ import annotations

import re
import secrets
import time

from experts import ConfigError

#: A job id is what :func:`new_job_id` makes (``20250101-120000-a1b2c3``) or a
#: name the user gives (``--job-id``): 1-64 letters, digits, ``.``, ``_`` or ``-``, starting with a
#: letter or digit. It names a directory (embedded) or Redis keys (queued), so it can never be a path
#: (``/``, ``..``) or hold a key separator (``:``).
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_job_id(job_id: str) -> str:
    """``job_id`` if it matches :data:`JOB_ID_PATTERN`, else a :class:`~experts.ConfigError` saying what is allowed."""
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
        raise ConfigError(
            f"invalid job id {job_id!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return job_id


def new_job_id() -> str:
    """A fresh, sortable job id: ``YYYYmmdd-HHMMSS-<6 hex>``."""
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
