"""The one interface every expert implements.

An expert has a ``name`` (its registry key), a weights tag, a device, and a
batch :meth:`Expert.run` that takes any image sources and returns one
:class:`ItemResult` per input, in order: a bad image or a failing item is
reported on that item and every other item still gets its evidence.

Subclasses implement :meth:`Expert._load` (build the model once) and
:meth:`Expert.predict` (decoded RGB images → evidence, one batch).
Feature experts also share :class:`FeatureExpert`, which splits ``predict`` into
``preprocess`` → ``forward`` → normalize so the raw forward can be timed alone.

>>> from experts import create_expert                             # doctest: +SKIP
>>> yolo = create_expert("yolo", weights="yolov8n.pt")             # doctest: +SKIP
>>> [r.evidence.count("person") for r in yolo.run(["bus.jpg"])]   # doctest: +SKIP
[4]
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import torch
from PIL import Image

from experts.device import resolve_device
from experts.errors import ConfigError, ExpertRunError, ImageError, WeightsNotFoundError
from experts.evidence import Features, evidence_from_dict
from experts.images import (
    DEFAULT_MAX_ASPECT_RATIO,
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageSource,
    LoadedImage,
    describe_source,
    load_image,
)
from experts.weights import WeightsRef, is_offline, require_local, resolve_weights

log = logging.getLogger(__name__)

#: Decoded pixels one forward batch may hold (~96 MB of RGB). A batch is cut early once its
#: images reach this, so sixteen 64 MP photos run one at a time instead of as 3 GB of RGB
#: at once; ordinary photos still fill a batch (16 × 2 MP). Results are the same, only
#: how many images share a forward pass changes.
DEFAULT_MAX_BATCH_PIXELS = 32_000_000

E = TypeVar("E")


@dataclass(frozen=True)
class ItemResult(Generic[E]):
    """The outcome of one input of a batch: evidence, or an error that names the cause."""

    index: int
    source: str
    sha256: str | None = None
    evidence: E | None = None
    error: str | None = None
    reason: str | None = None  # ImageError.reason, or "expert_failed"

    @property
    def ok(self) -> bool:
        return self.error is None

    def unwrap(self) -> E:
        """The evidence, or raise the item's error."""
        if self.error is not None:
            raise ImageError(self.error, reason=self.reason or "expert_failed", source=self.source)
        return self.evidence  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "source": self.source,
            "sha256": self.sha256,
            "evidence": None if self.evidence is None else self.evidence.to_dict(),
            "error": self.error,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ItemResult:
        ev = data.get("evidence")
        return cls(
            int(data["index"]),
            str(data["source"]),
            data.get("sha256"),
            None if ev is None else evidence_from_dict(ev),
            data.get("error"),
            data.get("reason"),
        )


class Expert(ABC):
    """Base class: weights resolution, device, lazy one-time model load, batched ``run``."""

    #: registry name, e.g. ``"yolo"``
    name: ClassVar[str] = "expert"
    #: what ``predict`` returns per image, e.g. :class:`~experts.evidence.Detections`
    evidence_type: ClassVar[type] = object
    #: one line on what to download when offline and weights are missing
    offline_hint: ClassVar[str] = (
        "Pass weights=PATH to a local checkpoint (command line: `expertbridge run NAME --weights PATH`)."
    )
    #: The constructor arguments a saved model may record and a file may set, each with its kind
    #: (checked by :mod:`experts.stored`): ``"weights"``, ``"name"`` (an architecture name),
    #: ``"value"`` (a plain option), or an expert class (a nested spec of that expert). Everything
    #: else -- device, offline, trust flags, hub repos, URL access -- comes from the user's settings.
    stored_fields: ClassVar[Mapping[str, str | type]] = {"weights": "weights"}
    #: True when the loader looks a bare weights name up on the hub (transformers), not in a tag list
    bare_weights_names_are_hub_ids: ClassVar[bool] = False
    #: decoded pixels held per forward batch (see :data:`DEFAULT_MAX_BATCH_PIXELS`)
    max_batch_pixels: ClassVar[int] = DEFAULT_MAX_BATCH_PIXELS

    def __init__(
        self,
        *,
        weights: str | None,
        device: str | torch.device | None = "auto",
        batch_size: int = 16,
        offline: bool | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        allow_urls: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.offline = is_offline() if offline is None else offline
        self.weights: WeightsRef = resolve_weights(weights)
        require_local(self.weights, expert=self.name, offline=self.offline, hint=self.offline_hint)
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.max_aspect_ratio = max_aspect_ratio
        self.max_file_bytes = max_file_bytes
        self.allow_urls = allow_urls
        self._model: Any = None
        self._load_lock = threading.Lock()
        #: ``{"name": ..., **kwargs}`` when made by :func:`~experts.registry.create_expert` (to rebuild it later)
        self.spec: dict[str, Any] | None = None

    # ------------------------------------------------------------------ identity

    @property
    def weights_tag(self) -> str:
        return self.weights.tag

    @property
    def config(self) -> dict[str, Any]:
        """JSON-safe preprocessing/inference settings that change the output (part of store keys)."""
        return {}

    @property
    def identity(self) -> dict[str, Any]:
        """Everything besides the image that determines this expert's output."""
        return {"expert": self.name, "weights": self.weights_tag, "config": self.config}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weights={self.weights.value or 'random'!r}, device={str(self.device)!r})"

    # ------------------------------------------------------------------ model

    @property
    def model(self) -> Any:
        """The underlying model, loaded on first use and reused afterwards."""
        if self._model is None:
            with self._load_lock:
                if self._model is None:
                    self._model = self._load()
        return self._model

    def load(self) -> Expert:
        """Load the model now (instead of on first use); returns ``self``."""
        _ = self.model
        return self

    @abstractmethod
    def _load(self) -> Any:
        """Build the model and its weights; called once."""

    @abstractmethod
    def predict(self, images: Sequence[Image.Image]) -> list[Any]:
        """Evidence for a batch of decoded RGB images (raises if the batch fails)."""

    # ------------------------------------------------------------------ batch API

    def __call__(self, source: ImageSource):
        """Evidence for a single image; raises :class:`ImageError` on a bad input."""
        return self.run([source])[0].unwrap()

    def run(self, sources: Iterable[ImageSource], *, progress: bool = False) -> list[ItemResult]:
        """Run on many inputs, ``batch_size`` at a time; one :class:`ItemResult` per input, in order."""
        sources = list(sources)
        results: list[ItemResult] = []
        bar = _progress(len(sources), self.name) if progress else None
        for start in range(0, len(sources), self.batch_size):
            chunk = sources[start : start + self.batch_size]
            results.extend(self._run_chunk(chunk, start))
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return results

    @property
    def intake_limits(self) -> dict[str, Any]:
        """This expert's :func:`~experts.images.load_image` keyword arguments (caps and URL opt-in)."""
        return {
            "max_pixels": self.max_pixels,
            "max_aspect_ratio": self.max_aspect_ratio,
            "max_file_bytes": self.max_file_bytes,
            "allow_urls": self.allow_urls,
        }

    def load_image(self, source: ImageSource) -> LoadedImage:
        return load_image(source, **self.intake_limits)

    def _run_chunk(self, chunk: Sequence[ImageSource], offset: int) -> list[ItemResult]:
        slots: list[ItemResult | None] = [None] * len(chunk)
        pending: list[tuple[int, LoadedImage]] = []
        pixels = 0
        for i, src in enumerate(chunk):
            try:
                img = self.load_image(src)
            except ImageError as err:
                slots[i] = ItemResult(offset + i, describe_source(src), error=str(err), reason=err.reason)
                continue
            except Exception as exc:  # noqa: BLE001 - intake must never take the neighbours down
                log.warning("intake failed on %s: %r", describe_source(src), exc)
                error = f"{describe_source(src)}: cannot read image ({type(exc).__name__}: {exc})"[:500]
                slots[i] = ItemResult(offset + i, describe_source(src), error=error, reason="unreadable")
                continue
            pending.append((i, img))
            pixels += img.size[0] * img.size[1]
            del img  # only `pending` holds it, so a flushed batch is freed before the next decode
            if pixels >= self.max_batch_pixels:  # run what we hold before decoding more
                self._predict_into(slots, pending, offset)
                pending, pixels = [], 0
        if pending:
            self._predict_into(slots, pending, offset)
        return slots  # type: ignore[return-value]

    def _predict_into(self, slots: list, loaded: list[tuple[int, LoadedImage]], offset: int) -> None:
        for (i, img), outcome in zip(loaded, self._predict_isolating([im for _, im in loaded])):
            if isinstance(outcome, Exception):
                slots[i] = ItemResult(offset + i, img.source, img.sha256, error=str(outcome), reason="expert_failed")
            else:
                slots[i] = ItemResult(offset + i, img.source, img.sha256, evidence=outcome)

    def _predict_isolating(self, images: list[LoadedImage]) -> list[Any]:
        """Predict a batch; if it fails, retry item by item so one bad input fails alone."""
        try:
            with torch.inference_mode():
                out = self.predict([im.image for im in images])
        except (WeightsNotFoundError, ConfigError):
            raise  # the expert itself is unusable: no item can succeed
        except Exception as exc:  # noqa: BLE001 - reported on the item, never lost
            if len(images) > 1:
                return [r for im in images for r in self._predict_isolating([im])]
            log.warning("%s failed on %s: %r", self.name, images[0].source, exc)
            return [ExpertRunError(f"{self.name} failed on this image: {type(exc).__name__}: {exc}"[:500])]
        if len(out) != len(images):
            raise ExpertRunError(f"{self.name}: predict returned {len(out)} results for {len(images)} images")
        return out


class FeatureExpert(Expert):
    """An image encoder: ``preprocess`` → ``forward`` → L2-normalize → :class:`Features`.

    ``forward`` is the raw model call on a preprocessed batch tensor; keeping it
    separate lets the benchmark time the framework against the bare model.
    """

    evidence_type = Features
    stored_fields = {**Expert.stored_fields, "normalize": "value"}

    def __init__(self, *, normalize: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.normalize = normalize

    @property
    def transform(self):
        """Callable PIL image → CHW float tensor (the model's own eval transform)."""
        raise NotImplementedError

    @abstractmethod
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw model call: ``(B, 3, H, W)`` → ``(B, D)`` features on ``self.device``."""

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        _ = self.model  # the transform may come with the model
        return torch.stack([self.transform(im) for im in images]).to(self.device)

    def encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``(B, D)`` float32 features on CPU, L2-normalized if ``normalize``."""
        with torch.inference_mode():
            feats = self.forward(self.preprocess(images)).float()
            if self.normalize:
                feats = torch.nn.functional.normalize(feats, dim=-1)
        return feats.cpu()

    def predict(self, images: Sequence[Image.Image]) -> list[Features]:
        feats = self.encode(images).numpy()
        return [Features(np.ascontiguousarray(f), self.normalize) for f in feats]

    @property
    def config(self) -> dict[str, Any]:
        return {"normalize": self.normalize}


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img")
