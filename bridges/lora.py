"""LoRA adapters on a bridged LM's attention: LLaVA's stage 2 in miniature, through ``peft``.

A bridge alone can only move the LM's *inputs*; low-rank adapters on the attention's query and
value projections let the LM itself bend a little towards reading them (Hu et al., LoRA; LLaVA
fine-tunes the LM in its second stage). The adapters are injected **in place** with peft's
``inject_adapter_in_model``: the LM stays the same plain ``transformers`` model, so the bridged
loss (body → head on the labelled positions only) and ``generate`` run unchanged, and the
base weights stay frozen. ``B`` starts at zero, so a freshly adapted LM computes exactly what
the frozen one did. Dropout is 0: training stays deterministic and resumable.

Adapter weights are plain tensors keyed by parameter name, saved as safetensors next to the
bridge (:mod:`bridges.bridged_lm`); the settings travel as JSON.

    settings = LoraSettings(rank=8)              # alpha 16 (2 × rank), q_proj + v_proj
    apply_lora(lm, settings)                     # idempotent for equal settings
    state = lora_state(lm)                       # {"model.layers.0.self_attn.q_proj.lora_A.default.weight": …}
    load_lora_state(lm, state)                   # every adapter tensor, right shapes, or ConfigError

>>> LoraSettings(rank=8).to_dict()
{'rank': 8, 'alpha': 16.0, 'targets': ['q_proj', 'v_proj']}
>>> LoraSettings.from_dict({"rank": 4, "alpha": 4, "targets": ["q_proj"]})
LoraSettings(rank=4, alpha=4.0, targets=('q_proj',))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from experts.errors import ConfigError

__all__ = [
    "DEFAULT_TARGETS",
    "LoraSettings",
    "apply_lora",
    "load_lora_state",
    "lora_parameters",
    "lora_settings_of",
    "lora_state",
]

#: The attention projections LoRA adapts by default (the LoRA paper's choice; Llama and Qwen2 name them so).
DEFAULT_TARGETS = ("q_proj", "v_proj")
_ADAPTER = "default"  # peft's adapter name; one adapter per LM


@dataclass(frozen=True)
class LoraSettings:
    """Rank, scale (``alpha``; the update is ``alpha / rank · B A``) and the module names adapted.

    ``alpha=None`` means ``2 × rank``, a common default that keeps the update's scale at 2.
    """

    rank: int
    alpha: float | None = None
    targets: tuple[str, ...] = DEFAULT_TARGETS

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ConfigError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
        alpha = 2.0 * self.rank if self.alpha is None else float(self.alpha)
        if not alpha > 0:
            raise ConfigError(f"LoRA alpha must be > 0, got {self.alpha!r}")
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise ConfigError(f"LoRA targets must be non-empty module names, got {self.targets!r}")
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "targets", tuple(sorted(set(targets))))

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoraSettings:
        if not isinstance(data, Mapping) or "rank" not in data:
            raise ConfigError(f"LoRA settings need at least a rank, got {data!r}")
        unknown = sorted(set(data) - {"rank", "alpha", "targets"})
        if unknown:
            raise ConfigError(f"LoRA settings: unknown field(s) {unknown}")
        return cls(int(data["rank"]), data.get("alpha"), tuple(data.get("targets", DEFAULT_TARGETS)))


def lora_settings_of(lm: nn.Module) -> LoraSettings | None:
    """The settings of the adapters already injected into ``lm``, or ``None`` if it has none."""
    configs = getattr(lm, "peft_config", None)
    config = configs.get(_ADAPTER) if isinstance(configs, dict) else None
    if config is None:
        return None
    return LoraSettings(int(config.r), float(config.lora_alpha), tuple(config.target_modules))


def apply_lora(lm: nn.Module, settings: LoraSettings) -> nn.Module:
    """Inject adapters into ``lm`` in place (once; again with the same settings is a no-op) and unfreeze them.

    The adapters draw their initial ``A`` from torch's global RNG: seed it first for a reproducible run.
    """
    existing = lora_settings_of(lm)
    if existing is not None:
        if existing != settings:
            raise ConfigError(f"this LM already carries LoRA adapters {existing}; cannot also apply {settings}")
    else:
        from peft import LoraConfig, inject_adapter_in_model

        config = LoraConfig(
            r=settings.rank,
            lora_alpha=settings.alpha,
            target_modules=list(settings.targets),
            lora_dropout=0.0,
            bias="none",
        )
        try:
            inject_adapter_in_model(config, lm, adapter_name=_ADAPTER)
        except ValueError as err:  # peft: "Target modules {...} not found in the base model"
            raise ConfigError(f"LoRA: {err}".splitlines()[0]) from err
    for _, param in lora_parameters(lm):
        param.requires_grad_(True)
    return lm


def lora_parameters(lm: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every adapter tensor, in the module's own (stable) order."""
    return [(name, p) for name, p in lm.named_parameters() if ".lora_" in name]


def lora_state(lm: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors (detached, contiguous, on the CPU), ready for ``safetensors.save_file``.

    On a CPU model they share memory with the live parameters: ``clone()`` them to keep a snapshot.
    """
    return {name: p.detach().contiguous().cpu() for name, p in lora_parameters(lm)}


@torch.no_grad()
def load_lora_state(lm: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into the adapters of ``lm``: the same names and shapes exactly, or :class:`ConfigError`."""
    params = dict(lora_parameters(lm))
    if not params:
        raise ConfigError("this LM has no LoRA adapters to load weights into; apply_lora first")
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise ConfigError(
            f"LoRA weights do not match the LM's adapters: {len(missing)} missing (e.g. {missing[:1]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:1]})"
        )
    for name, param in params.items():
        value = state[name]
        if tuple(value.shape) != tuple(param.shape):
            raise ConfigError(f"LoRA weight {name}: stored {tuple(value.shape)}, the LM has {tuple(param.shape)}")
        param.copy_(value.to(device=param.device, dtype=param.dtype))
