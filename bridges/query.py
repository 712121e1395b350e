"""Query bridge: a fixed number of learnable queries read the image by cross-attention.

BLIP-2's Q-Former and Qwen-VL's adapter share this shape: ``m`` learned query vectors
attend to the (projected) patch features, so the LM always receives exactly ``m`` soft
tokens no matter how many patches the encoder produced. Each layer is pre-norm
self-attention over the queries, cross-attention from queries to patches, and an MLP —
``torch.nn.TransformerDecoderLayer`` with ``norm_first=True`` is exactly that.

``pos_2d=True`` adds a fixed 2-D sin-cos encoding of the patch grid to the keys/values
(Qwen-VL), which needs a square number of patches per image; with a key-padding mask each
image gets its own grid (its real patches first, padding after). A ``(B, D)`` input is one patch.

``question_aware=True`` is InstructBLIP's instruction-aware Q-Former: the question's tokens (the LM's
own embeddings of the prompt text, projected to the hidden width, with 1-D sin-cos positions) join
the queries in self-attention, so what the queries read from the image can depend on what is asked
("is there a red shape?" needs the colour compared, not described). Only the queries come out.

>>> import torch
>>> bridge = QueryBridge(16, 32, num_queries=4, hidden_dim=8, num_layers=1, num_heads=2)
>>> bridge(torch.randn(2, 9, 16)).shape
torch.Size([2, 4, 32])
>>> bridge(torch.randn(2, 16)).shape
torch.Size([2, 4, 32])
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from experts.errors import ConfigError

__all__ = ["QueryBridge", "sincos_2d"]


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position encoding of a ``grid × grid`` patch grid, ``(grid*grid, dim)``.

    Half the channels encode the row, half the column (MAE / Qwen-VL); ``dim % 4 == 0``.
    Patches are numbered row-major, as ViTs flatten them.

    >>> sincos_2d(3, 8).shape
    torch.Size([9, 8])
    """
    if dim % 4:
        raise ConfigError(f"2-D sin-cos position encoding needs hidden_dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


def _sincos_1d(length: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sin-cos positions ``(length, dim)`` for the question's tokens (``dim`` even)."""
    half = dim // 2
    omega = 1.0 / (10000 ** (torch.arange(half, dtype=torch.float64) / half))
    angles = torch.arange(length, dtype=torch.float64).reshape(-1, 1) * omega.reshape(1, -1)
    out = torch.zeros(length, dim, dtype=torch.float64)
    out[:, : 2 * half] = torch.cat([angles.sin(), angles.cos()], dim=1)
    return out.float()


class QueryBridge(nn.Module):
    """``num_queries`` learnable queries cross-attending to patch features → ``(B, m, lm_dim)``.

    ``forward(features, key_padding_mask=None)``: ``features`` is ``(B, D)`` or ``(B, P, D)``;
    ``key_padding_mask`` is ``(B, P)`` bool, ``True`` where a patch is padding and must be
    ignored (images with different patch counts batched together).

    >>> QueryBridge(8, 4, num_queries=2, hidden_dim=8, num_layers=1, num_heads=2).config["kind"]
    'query'
    """

    kind = "query"

    def __init__(
        self,
        in_dim: int,
        lm_dim: int,
        num_queries: int = 32,
        hidden_dim: int = 256,
        num_layers: int = 2,
        num_heads: int = 4,
        pos_2d: bool = False,
        question_aware: bool = False,
    ):
        super().__init__()
        for name, value in (
            ("in_dim", in_dim),
            ("lm_dim", lm_dim),
            ("num_queries", num_queries),
            ("hidden_dim", hidden_dim),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
        ):
            if int(value) < 1:
                raise ConfigError(f"QueryBridge: {name} must be a positive integer, got {value!r}")
        if hidden_dim % num_heads:
            raise ConfigError(f"QueryBridge: hidden_dim={hidden_dim} must be divisible by num_heads={num_heads}")
        if pos_2d and hidden_dim % 4:
            raise ConfigError(f"QueryBridge: pos_2d needs hidden_dim divisible by 4, got {hidden_dim}")
        self.in_dim, self.lm_dim = int(in_dim), int(lm_dim)
        self.num_queries, self.hidden_dim = int(num_queries), int(hidden_dim)
        self.num_layers, self.num_heads, self.pos_2d = int(num_layers), int(num_heads), bool(pos_2d)
        self.question_aware = bool(question_aware)

        self.input_proj = nn.Linear(self.in_dim, self.hidden_dim)
        # Small init (BLIP-2 uses std 0.02) keeps the first attention maps near uniform.
        self.queries = nn.Parameter(torch.randn(self.num_queries, self.hidden_dim) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(
                d_model=self.hidden_dim,
                nhead=self.num_heads,
                dim_feedforward=4 * self.hidden_dim,
                dropout=0.0,  # bridges are trained on few pairs; dropout makes resume checks noisy
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(self.num_layers)
        )
        self.norm = nn.LayerNorm(self.hidden_dim)  # pre-norm layers leave the output un-normalised
        self.output_proj = nn.Linear(self.hidden_dim, self.lm_dim)
        if self.question_aware:
            self.question_proj = nn.Linear(self.lm_dim, self.hidden_dim)

    def forward(
        self,
        features: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        question: torch.Tensor | None = None,
        question_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, D)`` or ``(B, P, D)`` → ``(B, num_queries, lm_dim)``.

        A question-aware bridge also takes ``question`` ``(B, T, lm_dim)`` (the LM's embeddings of the
        prompt text) and ``question_mask`` ``(B, T)``, True on real tokens.
        """
        if features.dim() == 2:
            features = features.unsqueeze(1)
        if features.dim() != 3 or features.shape[-1] != self.in_dim:
            raise ConfigError(
                f"QueryBridge: expected features of shape (B, {self.in_dim}) or (B, P, {self.in_dim}), "
                f"got {tuple(features.shape)}"
            )
        batch, patches, _ = features.shape
        if key_padding_mask is not None and tuple(key_padding_mask.shape) != (batch, patches):
            raise ConfigError(
                f"QueryBridge: key_padding_mask must be (B, P) = {(batch, patches)}, "
                f"got {tuple(key_padding_mask.shape)}"
            )
        memory = self.input_proj(features.to(self.queries.dtype))
        if self.pos_2d:
            memory = memory + self._positions(batch, patches, key_padding_mask).to(memory)
        x = self.queries.unsqueeze(0).expand(batch, -1, -1)
        text_padding = None
        if self.question_aware:
            text, text_padding = self._question_tokens(batch, question, question_mask)
            x = torch.cat([x, text], dim=1)
        mask = key_padding_mask.bool() if key_padding_mask is not None else None
        for layer in self.layers:
            x = layer(x, memory, tgt_key_padding_mask=text_padding, memory_key_padding_mask=mask)
        return self.output_proj(self.norm(x[:, : self.num_queries]))

    def _question_tokens(
        self, batch: int, question: torch.Tensor | None, question_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The question projected to ``(B, T, hidden)`` with positions, and the padding mask of queries + text."""
        if question is None or question.dim() != 3 or question.shape[0] != batch or question.shape[2] != self.lm_dim:
            got = None if question is None else tuple(question.shape)
            raise ConfigError(f"QueryBridge is question-aware: pass question=(B, T, {self.lm_dim}), got {got}")
        length = question.shape[1]
        positions = _sincos_1d(length, self.hidden_dim).to(self.queries)
        text = self.question_proj(question.to(self.queries.dtype)) + positions
        if question_mask is None:
            real = torch.ones(batch, length, dtype=torch.bool, device=question.device)
        else:
            real = question_mask.bool()
        queries = torch.ones(batch, self.num_queries, dtype=torch.bool, device=real.device)
        return text, ~torch.cat([queries, real], dim=1)

    def _positions(self, batch: int, patches: int, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """``(B, P, hidden)`` 2-D encodings: each row's own square grid (real patches first), zeros on padding."""
        if key_padding_mask is None:
            counts = [patches] * batch
        else:
            valid = ~key_padding_mask.bool()
            counts = [int(v) for v in valid.sum(dim=1)]
            # Padding must trail: the grid is read row-major from the first patch on.
            if not all(bool(row[:n].all()) for row, n in zip(valid, counts)):
                raise ConfigError("QueryBridge: pos_2d needs each row's real patches first, then its padding")
        out = torch.zeros(batch, patches, self.hidden_dim)
        cache: dict[int, torch.Tensor] = {}
        for i, count in enumerate(counts):
            if count not in cache:
                grid = math.isqrt(count)
                if grid * grid != count:
                    raise ConfigError(f"QueryBridge: pos_2d needs a square patch grid, got P={count} patches")
                cache[count] = sincos_2d(grid, self.hidden_dim)
            out[i, :count] = cache[count]
        return out

    @property
    def config(self) -> dict[str, Any]:
        """JSON-safe constructor arguments (plus ``kind``), enough to rebuild the module."""
        return {
            "kind": self.kind,
            "in_dim": self.in_dim,
            "lm_dim": self.lm_dim,
            "num_queries": self.num_queries,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "pos_2d": self.pos_2d,
            **({"question_aware": True} if self.question_aware else {}),  # old saved configs stay valid
        }
