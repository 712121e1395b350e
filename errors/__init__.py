"""One error family for the whole framework, at the bottom of the package map.

Every error a user can act on derives from :class:`ExpertBridgeError`, so
``except ExpertBridgeError`` catches all of them and nothing else. The subclasses
say *what* went wrong; their messages say what to do about it.

This package imports nothing of ours and every package may import it: ``experts`` re-exports it
(``from experts import ConfigError`` and ``experts.errors`` keep working) and ``cache``, which may
not import ``experts``, raises it too.

>>> from errors import ConfigError, ExpertBridgeError
>>> issubclass(ConfigError, ExpertBridgeError) and issubclass(ConfigError, ValueError)
True
"""

from __future__ import annotations


class ExpertBridgeError(Exception):
    """Base class of every error raised on purpose by expertbridge."""


class ImageError(ExpertBridgeError, ValueError):
    """An input could not be turned into an RGB image.

    ``reason`` is a short machine-readable code (``missing``, ``unreadable``,
    ``not_a_file``, ``not_an_image``, ``truncated``, ``empty``, ``too_large``,
    ``aspect_ratio``, ``unsupported``, ``url_disabled``, ``fetch_failed``) so batch
    reports can be grouped by cause.
    """

    def __init__(self, message: str, *, reason: str, source: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.source = source


class WeightsNotFoundError(ExpertBridgeError, FileNotFoundError):
    """Weights are missing locally and may not (or could not) be fetched."""


class ConfigError(ExpertBridgeError, ValueError):
    """A setting or argument is invalid; the message names the setting."""


class ExpertRunError(ExpertBridgeError, RuntimeError):
    """An expert failed on an input that decoded fine (e.g. the model raised)."""


class ChatModelError(ExpertBridgeError, RuntimeError):
    """A chat model or its server failed (the message says which, why, and what to try)."""
