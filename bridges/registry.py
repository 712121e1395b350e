"""Build a learnable bridge by name, and rebuild one from its saved ``.config``.

>>> bridge = create_bridge("mlp", in_dim=16, lm_dim=32, num_tokens=2)
>>> type(bridge).__name__, bridge.config["kind"]
('MLPProjector', 'mlp')
>>> rebuilt = create_bridge(**bridge.config)  # ``kind`` travels inside the config
>>> rebuilt.config == bridge.config
True
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from experts.errors import ConfigError

from .projector import LinearProjector, MLPProjector
from .query import QueryBridge

__all__ = ["BRIDGES", "create_bridge"]

#: kind → class. Every class takes ``in_dim`` and ``lm_dim`` and exposes ``.config``.
BRIDGES: dict[str, type[nn.Module]] = {
    "linear": LinearProjector,
    "mlp": MLPProjector,
    "query": QueryBridge,
}


def create_bridge(kind: str, **config: Any) -> nn.Module:
    """A new, randomly initialised bridge of ``kind`` (``linear``, ``mlp`` or ``query``).

    Unknown kinds or arguments raise :class:`~experts.errors.ConfigError` naming the valid ones.
    """
    cls = BRIDGES.get(str(kind).lower())
    if cls is None:
        raise ConfigError(f"unknown bridge kind {kind!r}; choose one of {sorted(BRIDGES)}")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - accepted)
    if unknown:
        raise ConfigError(f"bridge {kind!r}: unknown argument(s) {unknown}; accepted: {sorted(accepted)}")
    missing = sorted(name for name in ("in_dim", "lm_dim") if name not in config)
    if missing:
        raise ConfigError(f"bridge {kind!r}: missing required argument(s) {missing}")
    return cls(**config)
