"""A saved bridge on disk: ``bridge.safetensors`` + ``bridge.json`` (+ ``lora.safetensors``).

What :meth:`BridgedLM.save <bridges.bridged_lm.BridgedLM.save>` writes and
:meth:`BridgedLM.load <bridges.bridged_lm.BridgedLM.load>` reads back. The LM itself is never
saved: ``bridge.json`` names it (``"lm"``) and records the bridge's config, its dimensions, the
image placeholder and the LoRA settings (``null`` without adapters). Everything here works on the
parts (a bridge module, an LM, LoRA settings), so it needs nothing from :mod:`bridges.bridged_lm`.

Reading is guarded: ``bridge.json`` is a few bytes a user only reads, so the sizes it claims are
checked against the tensors actually stored before any memory is allocated for them.

::

    save_bridge("runs/bridge", bridge, lm, lora, meta)      # meta = describe(...)
    saved = open_saved("runs/bridge")                       # checked config + bridge (weights not loaded)
    load_weights("runs/bridge", saved.bridge, lm, saved.lora)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from experts.errors import ConfigError

from .lora import LoraSettings, load_lora_state, lora_state
from .registry import create_bridge

__all__ = [
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "LORA_FILE",
    "WEIGHTS_FILE",
    "SavedBridge",
    "describe",
    "load_weights",
    "open_saved",
    "read_config",
    "save_bridge",
]

#: Version of the ``bridge.json`` layout written by :func:`save_bridge`.
FORMAT_VERSION = 1
WEIGHTS_FILE, CONFIG_FILE, LORA_FILE = "bridge.safetensors", "bridge.json", "lora.safetensors"


@dataclass(frozen=True)
class SavedBridge:
    """A saved bridge's checked ``bridge.json`` and the bridge module it describes (fresh, untrained weights).

    ``bridge`` is allocated only after its shapes matched the weights file; :func:`load_weights` fills it.
    """

    meta: dict[str, Any]
    bridge: nn.Module
    lora: LoraSettings | None

    @property
    def image_token(self) -> str:
        return str(self.meta["image_token"])

    @property
    def lm_name(self) -> str:
        return str(self.meta["lm"])


def describe(bridge: nn.Module, lm_name: str, image_token: str, lora: LoraSettings | None) -> dict[str, Any]:
    """The ``bridge.json`` contents for a bridge used with the LM named ``lm_name``.

    >>> # describe(create_bridge("mlp", in_dim=8, lm_dim=4, num_tokens=2), "lm", "<image>", None)["feature_dim"] -> 8
    """
    config = dict(bridge.config)
    return {
        "format_version": FORMAT_VERSION,
        "bridge": config,
        "lm": lm_name,
        "lm_dim": int(config["lm_dim"]),
        "feature_dim": int(config["in_dim"]),
        "image_token": image_token,
        "lora": lora.to_dict() if lora is not None else None,
    }


def save_bridge(
    directory: str | Path, bridge: nn.Module, lm: Any, lora: LoraSettings | None, meta: dict[str, Any]
) -> Path:
    """Write the bridge's weights, ``lm``'s LoRA adapters (when ``lora``) and ``meta`` into ``directory`` (created)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().contiguous().cpu() for name, t in bridge.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format_version": str(FORMAT_VERSION)})
    (directory / LORA_FILE).unlink(missing_ok=True)  # never leave a stale one beside a bridge without LoRA
    if lora is not None:
        save_file(lora_state(lm), str(directory / LORA_FILE), metadata={"format_version": str(FORMAT_VERSION)})
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return directory


def open_saved(directory: str | Path) -> SavedBridge:
    """Read and check a saved bridge: its config, a bridge module matching the stored tensors, its LoRA settings.

    The LoRA file's ranks are checked here too, before anyone allocates adapters for them.
    """
    directory = Path(directory)
    meta = read_config(directory)
    bridge = _bridge_matching_file(meta["bridge"], directory / WEIGHTS_FILE)
    lora = _lora_of(meta)
    if lora is not None:
        _check_lora_file(lora, directory / LORA_FILE)
    return SavedBridge(meta, bridge, lora)


def load_weights(
    directory: str | Path,
    bridge: nn.Module,
    lm: Any,
    lora: LoraSettings | None,
    *,
    lora_may_be_absent: bool = False,
) -> None:
    """Copy a saved bridge's weights into ``bridge`` (and its LoRA adapters into ``lm``); settings must match.

    ``lora_may_be_absent``: a bridge saved *without* LoRA may seed a model *with* it (the adapters keep
    their fresh, zero-update start): LLaVA's stage 1 → stage 2.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = read_config(directory)
    if meta["bridge"] != json.loads(json.dumps(bridge.config)):  # as JSON: tuples read back as lists
        raise ConfigError(f"{directory}: saved bridge {meta['bridge']} differs from this one {bridge.config}")
    saved_lora = _lora_of(meta)
    if saved_lora != lora and not (lora_may_be_absent and saved_lora is None):
        raise ConfigError(f"{directory}: saved LoRA settings {saved_lora} differ from this model's {lora}")
    bridge.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    if saved_lora is not None:
        lora_path = directory / LORA_FILE
        if not lora_path.is_file():
            raise ConfigError(f"{directory}: {CONFIG_FILE} names LoRA adapters but {LORA_FILE} is missing")
        load_lora_state(lm, load_file(str(lora_path)))


def read_config(directory: str | Path) -> dict[str, Any]:
    """The ``bridge.json`` of a saved bridge, checked: both files present, a format this version reads."""
    directory = Path(directory)
    meta_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not meta_path.is_file() or not weights_path.is_file():
        raise ConfigError(f"{directory} is not a saved bridge: expected {CONFIG_FILE} and {WEIGHTS_FILE} in it")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise ConfigError(
            f"{meta_path}: format_version {meta.get('format_version')!r} is not supported "
            f"(this version reads {FORMAT_VERSION})"
        )
    return meta


def _check_lora_file(lora: LoraSettings, path: Path) -> None:
    """The adapter file exists and its tensors have the rank ``bridge.json`` claims (a typo there must not
    allocate a rank-10⁶ adapter on every projection before the mismatch shows)."""
    from safetensors import safe_open

    if not path.is_file():
        raise ConfigError(f"{path.parent}: {CONFIG_FILE} names LoRA adapters but {LORA_FILE} is missing")
    with safe_open(str(path), framework="pt") as fh:
        for name in fh.keys():
            shape = fh.get_slice(name).get_shape()
            rank = shape[0] if ".lora_A." in name else shape[-1] if ".lora_B." in name else None
            if rank != lora.rank:
                raise ConfigError(f"{path}: {name} has shape {list(shape)}, not a rank-{lora.rank} LoRA adapter")


def _lora_of(meta: dict[str, Any]) -> LoraSettings | None:
    return LoraSettings.from_dict(meta["lora"]) if meta.get("lora") else None


def _bridge_matching_file(config: dict[str, Any], weights_path: Path) -> torch.nn.Module:
    """Build the bridge a saved config describes, allocating only once its shapes match the weights file.

    ``bridge.json`` is a few bytes a user only reads: ``in_dim: 10**9`` must not cost gigabytes. The bridge
    is built on the meta device (no memory), its parameter shapes are compared with the tensors actually
    stored in the safetensors file, and only then is real memory allocated — at most the file's own size.
    """
    from safetensors import safe_open

    with torch.device("meta"):
        bridge = create_bridge(**config)
    expected = {name: tuple(t.shape) for name, t in bridge.state_dict().items()}
    with safe_open(str(weights_path), framework="pt") as fh:
        stored = {name: tuple(fh.get_slice(name).get_shape()) for name in fh.keys()}
    if stored != expected:
        differ = sorted(n for n in set(stored) | set(expected) if stored.get(n) != expected.get(n))
        raise ConfigError(
            f"{weights_path}: the stored tensors do not match the bridge its config describes "
            f"(first differing: {differ[0]} stored {stored.get(differ[0])} vs config {expected.get(differ[0])})"
        )
    return bridge.to_empty(device="cpu")
