"""Projector bridges: visual features → a few soft tokens in a language model's embedding space.

Two input kinds are accepted, as the encoders in ``experts`` produce them:

* ``(B, D)`` — one pooled / CLS vector per image. It is projected to ``num_tokens * lm_dim``
  and reshaped into ``num_tokens`` soft tokens (MiniGPT-4 style: one vector, several tokens,
  so the LM gets more than one embedding slot to read the image from).
* ``(B, P, D)`` — patch tokens. Each patch becomes its own soft token (LLaVA); ``num_tokens``
  must then be 1, since the patch count already sets the sequence length.

The output is always ``(B, k, lm_dim)``.

>>> import torch
>>> MLPProjector(16, 32, num_tokens=4)(torch.randn(2, 16)).shape
torch.Size([2, 4, 32])
>>> LinearProjector(16, 32)(torch.randn(2, 9, 16)).shape
torch.Size([2, 9, 32])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from experts.errors import ConfigError

__all__ = ["LinearProjector", "MLPProjector"]


def _check_positive(name: str, value: int) -> int:
    if int(value) < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class _Projector(nn.Module):
    """Shared shape handling: the subclass only provides ``self.net`` (``D → num_tokens*lm_dim``)."""

    kind: str = ""

    def __init__(self, in_dim: int, lm_dim: int, num_tokens: int = 1):
        super().__init__()
        self.in_dim = _check_positive("in_dim", in_dim)
        self.lm_dim = _check_positive("lm_dim", lm_dim)
        self.num_tokens = _check_positive("num_tokens", num_tokens)
        self.net: nn.Module

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` or ``(B, P, D)`` → ``(B, k, lm_dim)``."""
        if features.dim() not in (2, 3) or features.shape[-1] != self.in_dim:
            raise ConfigError(
                f"{type(self).__name__}: expected features of shape (B, {self.in_dim}) or (B, P, {self.in_dim}), "
                f"got {tuple(features.shape)}"
            )
        if features.dim() == 3 and self.num_tokens != 1:
            # Several tokens per patch would blow the sequence up P×num_tokens; nobody wants that.
            raise ConfigError(f"{type(self).__name__}: num_tokens={self.num_tokens} applies to (B, D) inputs only")
        out = self.net(features.to(self._dtype()))
        if features.dim() == 2:
            return out.reshape(out.shape[0], self.num_tokens, self.lm_dim)
        return out

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def config(self) -> dict[str, Any]:
        """JSON-safe constructor arguments (plus ``kind``), enough to rebuild the module."""
        return {"kind": self.kind, "in_dim": self.in_dim, "lm_dim": self.lm_dim, "num_tokens": self.num_tokens}


class LinearProjector(_Projector):
    """One linear map ``D → num_tokens * lm_dim`` (LLaVA-1.0).

    >>> LinearProjector(8, 4, num_tokens=2).config
    {'kind': 'linear', 'in_dim': 8, 'lm_dim': 4, 'num_tokens': 2}
    """

    kind = "linear"

    def __init__(self, in_dim: int, lm_dim: int, num_tokens: int = 1):
        super().__init__(in_dim, lm_dim, num_tokens)
        self.net = nn.Linear(self.in_dim, self.num_tokens * self.lm_dim)


class MLPProjector(_Projector):
    """Linear → GELU → Linear (LLaVA-1.5). ``hidden_dim`` defaults to ``lm_dim``.

    >>> MLPProjector(8, 4).config["hidden_dim"]
    4
    """

    kind = "mlp"

    def __init__(self, in_dim: int, lm_dim: int, num_tokens: int = 1, hidden_dim: int | None = None):
        super().__init__(in_dim, lm_dim, num_tokens)
        self.hidden_dim = _check_positive("hidden_dim", hidden_dim if hidden_dim is not None else self.lm_dim)
        self.net = nn.Sequential(
            nn.Linear(self.in_dim, self.hidden_dim),
            nn.GELU(),
            nn.Linear(self.hidden_dim, self.num_tokens * self.lm_dim),
        )

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "hidden_dim": self.hidden_dim}
