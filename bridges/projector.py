"""Projector bridges: visual features → a few soft tokens in a language model's embedding space.

Two input kinds are accepted, as the encoders in ``experts`` produce them:

* ``(B, D)`` — one pooled / CLS vector per image. It is projected to ``num_tokens * lm_dim``
  and reshaped into ``num_tokens`` soft tokens (MiniGPT-4 style: one vector, several tokens,
  so the LM gets more than one embedding slot to read the image from).
* ``(B, P, D)`` — patch tokens. Each patch becomes its own soft token (LLaVA); ``num_tokens``
  must then be 1, since the patch count already sets the sequence length.

The output is always ``(B, k, lm_dim)``.

``question_aware=True`` (pooled inputs only) also feeds the projector the question: the mean of
the LM's own embeddings of the prompt's text tokens is concatenated to the image vector, so the
soft tokens can depend on what is asked (InstructBLIP gives its Q-Former the instruction for the
same reason). Measured on easy-VQA: a plain projector into a frozen SmolLM2 learns the open
questions (shape, colour) but answers "is there a red shape?" from the question's wording alone;
whether the image's colour matches the asked one is a comparison the frozen LM did not learn to make.

``question_fusion="product"`` fuses the two multiplicatively instead (MLB, Kim et al. 2017):
``tanh(W_i image) * tanh(W_q question)``, ``lm_dim`` wide, goes into the net. A comparison ("is the
colour asked the colour seen?") is a product of the two, which a concatenation feeds to the net only
as a sum; trained directly on easy-VQA answers, the product learnt presence where concatenation did not.

``question_norm=True`` layer-normalizes the pooled question (no parameters) before it is fused: the LM's
embedding scale then no longer sets how loud the question is (Qwen2.5's embeddings are ~6× smaller than
SmolLM2's: a question's mean embedding has norm 0.23 vs 1.36). Without it, a product-fused bridge sits
at chance on yes/no questions for epochs before it learns them (see the README's bridge section).

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

__all__ = ["FUSIONS", "LinearProjector", "MLPProjector"]

#: how a question-aware projector combines the pooled question with the image vector
FUSIONS = ("concat", "product")


def _check_positive(name: str, value: int) -> int:
    if int(value) < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class _Projector(nn.Module):
    """Shared shape handling: the subclass only provides ``self.net`` (``D → num_tokens*lm_dim``)."""

    kind: str = ""

    def __init__(
        self,
        in_dim: int,
        lm_dim: int,
        num_tokens: int = 1,
        question_aware: bool = False,
        question_fusion: str = "concat",
        question_norm: bool = False,
    ):
        super().__init__()
        self.in_dim = _check_positive("in_dim", in_dim)
        self.lm_dim = _check_positive("lm_dim", lm_dim)
        self.num_tokens = _check_positive("num_tokens", num_tokens)
        self.question_aware = bool(question_aware)
        if question_fusion not in FUSIONS or (question_fusion != "concat" and not question_aware):
            raise ConfigError(f"question_fusion must be one of {FUSIONS} (not concat: question-aware only)")
        self.question_fusion = question_fusion
        if question_norm and not question_aware:
            raise ConfigError("question_norm applies to question-aware projectors only")
        self.question_norm = bool(question_norm)
        if question_fusion == "product":
            self.fuse_image = nn.Linear(self.in_dim, self.lm_dim)
            self.fuse_question = nn.Linear(self.lm_dim, self.lm_dim)
        self.net: nn.Module

    @property
    def net_in_dim(self) -> int:
        """Width of the net's input: the image vector, plus the pooled question when question-aware (or their
        product, ``lm_dim`` wide)."""
        if self.question_fusion == "product":
            return self.lm_dim
        return self.in_dim + (self.lm_dim if self.question_aware else 0)

    def forward(
        self,
        features: torch.Tensor,
        question: torch.Tensor | None = None,
        question_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, D)`` or ``(B, P, D)`` → ``(B, k, lm_dim)``.

        A question-aware projector also takes ``question`` ``(B, T, lm_dim)`` (the LM's embeddings of
        the prompt text) and ``question_mask`` ``(B, T)``, True on real tokens.
        """
        if features.dim() not in (2, 3) or features.shape[-1] != self.in_dim:
            raise ConfigError(
                f"{type(self).__name__}: expected features of shape (B, {self.in_dim}) or (B, P, {self.in_dim}), "
                f"got {tuple(features.shape)}"
            )
        if features.dim() == 3 and self.num_tokens != 1:
            # Several tokens per patch would blow the sequence up P×num_tokens; nobody wants that.
            raise ConfigError(f"{type(self).__name__}: num_tokens={self.num_tokens} applies to (B, D) inputs only")
        features = features.to(self._dtype())
        if self.question_aware:
            pooled = self._pooled_question(features, question, question_mask)
            if self.question_fusion == "product":
                features = torch.tanh(self.fuse_image(features)) * torch.tanh(self.fuse_question(pooled))
            else:
                features = torch.cat([features, pooled], dim=-1)
        out = self.net(features)
        if features.dim() == 2:
            return out.reshape(out.shape[0], self.num_tokens, self.lm_dim)
        return out

    def _pooled_question(
        self, features: torch.Tensor, question: torch.Tensor | None, mask: torch.Tensor | None
    ) -> torch.Tensor:
        if features.dim() != 2:
            raise ConfigError(f"{type(self).__name__}: a question-aware projector reads pooled (B, D) features")
        if question is None or question.dim() != 3 or question.shape[0] != features.shape[0]:
            got = None if question is None else tuple(question.shape)
            raise ConfigError(
                f"{type(self).__name__} is question-aware: pass question=(B, T, {self.lm_dim}), got {got}"
            )
        question = question.to(features.dtype)
        if mask is None:
            pooled = question.mean(dim=1)
        else:
            weights = mask.to(features.dtype).unsqueeze(-1)
            pooled = (question * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return nn.functional.layer_norm(pooled, (self.lm_dim,)) if self.question_norm else pooled

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def config(self) -> dict[str, Any]:
        """JSON-safe constructor arguments (plus ``kind``), enough to rebuild the module."""
        config = {"kind": self.kind, "in_dim": self.in_dim, "lm_dim": self.lm_dim, "num_tokens": self.num_tokens}
        if self.question_aware:  # only when set: bridges saved before these options load unchanged
            config["question_aware"] = True
        if self.question_fusion != "concat":
            config["question_fusion"] = self.question_fusion
        if self.question_norm:
            config["question_norm"] = True
        return config


class LinearProjector(_Projector):
    """One linear map ``D → num_tokens * lm_dim`` (LLaVA-1.0).

    >>> LinearProjector(8, 4, num_tokens=2).config
    {'kind': 'linear', 'in_dim': 8, 'lm_dim': 4, 'num_tokens': 2}
    """

    kind = "linear"

    def __init__(
        self,
        in_dim: int,
        lm_dim: int,
        num_tokens: int = 1,
        question_aware: bool = False,
        question_fusion: str = "concat",
        question_norm: bool = False,
    ):
        super().__init__(in_dim, lm_dim, num_tokens, question_aware, question_fusion, question_norm)
        self.net = nn.Linear(self.net_in_dim, self.num_tokens * self.lm_dim)


class MLPProjector(_Projector):
    """Linear → GELU → Linear (LLaVA-1.5). ``hidden_dim`` defaults to ``lm_dim``.

    >>> MLPProjector(8, 4).config["hidden_dim"]
    4
    """

    kind = "mlp"

    def __init__(
        self,
        in_dim: int,
        lm_dim: int,
        num_tokens: int = 1,
        hidden_dim: int | None = None,
        question_aware: bool = False,
        question_fusion: str = "concat",
        question_norm: bool = False,
    ):
        super().__init__(in_dim, lm_dim, num_tokens, question_aware, question_fusion, question_norm)
        self.hidden_dim = _check_positive("hidden_dim", hidden_dim if hidden_dim is not None else self.lm_dim)
        self.net = nn.Sequential(
            nn.Linear(self.net_in_dim, self.hidden_dim),
            nn.GELU(),
            nn.Linear(self.hidden_dim, self.num_tokens * self.lm_dim),
        )

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "hidden_dim": self.hidden_dim}
