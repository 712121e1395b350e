"""Where batch work goes: the Celery queue of each expert (or task lane), and the default Redis.

>>> from workflows.settings import Settings
>>> queue_for("timm", Settings(expert_queues={}))
'expertbridge.timm'
>>> redacted("redis://user:secret@host:6379/0")
'redis://***@host:6379/0'
"""

from __future__ import annotations

import re

from workflows.settings import Settings

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
QUEUE_PREFIX = "expertbridge"


def queue_for(route: str, settings: Settings) -> str:
    """The Celery queue of an expert (or task lane): ``expertbridge.<name>`` unless ``expert_queues`` maps it."""
    return settings.expert_queues.get(route) or f"{QUEUE_PREFIX}.{route}"


def redacted(url: str) -> str:
    """``url`` with its credentials masked, for error messages."""
    return re.sub(r"//[^@/]*@", "//***@", url)
