"""Reading checkpoint files safely and applying them to a module.

Pickled checkpoints are read with ``torch.load(weights_only=True)``: tensors and
plain containers only, never arbitrary objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch

from experts.errors import ConfigError

Match = Literal["name", "position"]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` file, unwrapping ``state_dict``/``model`` keys."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the message matters more than the type here
        raise ConfigError(f"{path}: not a loadable tensor checkpoint ({type(exc).__name__}: {exc})"[:600]) from exc
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{path}: expected a mapping of parameter names to tensors")
    return dict(obj)


def apply_state_dict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], match: Match = "name") -> None:
    """Load ``state`` into ``module``.

    ``match="name"`` is the usual strict load. ``match="position"`` pairs the
    i-th tensor of the file with the i-th entry of the module's state dict, for
    checkpoints saved by another implementation of the same architecture (same
    order and shapes, different names); every shape is checked first.
    """
    if match == "name":
        result = module.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ConfigError(
                f"checkpoint does not fit {type(module).__name__}: missing {result.missing_keys[:5]}, "
                f"unexpected {result.unexpected_keys[:5]} (try match='position' for renamed checkpoints)"
            )
        return
    if match != "position":
        raise ConfigError(f"match must be 'name' or 'position', got {match!r}")
    target = module.state_dict()
    if len(target) != len(state):
        raise ConfigError(f"position match: checkpoint has {len(state)} tensors, model has {len(target)}")
    for (name, ours), (their_name, theirs) in zip(target.items(), state.items()):
        if ours.shape != theirs.shape:
            raise ConfigError(
                f"position match: {their_name} {tuple(theirs.shape)} does not fit {name} {tuple(ours.shape)}"
            )
    module.load_state_dict(dict(zip(target.keys(), state.values())), strict=True)
