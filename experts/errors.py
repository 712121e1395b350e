"""The error family, re-exported: it lives in the top-level :mod:`errors` package so that ``cache``
(which may not import ``experts``) raises the same classes. ``experts.errors.ConfigError is
errors.ConfigError``: one family, two import paths."""

from __future__ import annotations

from errors import (
    ChatModelError,
    ConfigError,
    ExpertBridgeError,
    ExpertRunError,
    ImageError,
    WeightsNotFoundError,
)

__all__ = [
    "ChatModelError",
    "ConfigError",
    "ExpertBridgeError",
    "ExpertRunError",
    "ImageError",
    "WeightsNotFoundError",
]
