"""An expert *through* the feature store: :class:`StoredExpert` answers hits from the store
and runs the wrapped expert on the misses only.

    stored = StoredExpert(create_expert("yolo"), DirectoryStore("~/.cache/eb"))
    results = stored.run(paths)            # the same ItemResults as expert.run(paths)
    stored.last_run                        # StoreRun(hits=..., misses=..., failed=...)

Keys are :func:`cache.keys.feature_key` of the image's content hash and the
expert's identity (name, weights tag, preprocessing config); values are the
evidence encoded by :func:`experts.evidence.evidence_to_array`. A hit costs a
file hash and a store read: no decode, no forward pass. A file is read once per run:
its hash is remembered by path, size and mtime (:class:`~experts.file_hashes.FileHashes`,
shared by the experts and views of one run when the caller passes one), and a miss is
decoded from the bytes read for hashing.

A StoredExpert is an :class:`~experts.Expert`, so anything that takes experts (the
planner's toolbox) uses the store without knowing about it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from cache.keys import feature_key
from cache.store import FeatureStore
from experts import Expert, ImageError, ItemResult
from experts.evidence import evidence_from_array, evidence_to_array
from experts.file_hashes import FileHashes, Hashed
from experts.images import ImageSource, LoadedImage, describe_source

#: ``(image, sha256) -> image``: derive the input actually fed to the expert (e.g. a seeded augmentation).
Transform = Callable[[Image.Image, str], Image.Image]


@dataclass(frozen=True)
class StoreRun:
    """What one pass through the store did: answered from the store, computed by the model, failed."""

    hits: int
    misses: int
    failed: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class StoredExpert(Expert):
    """``expert``, answered from ``store`` where possible; new results are written back.

    ``variant`` + ``transform`` store derived inputs (augmented views) under their own
    keys: the transform only runs on misses. ``hashes`` shares remembered file hashes
    between StoredExperts of one run (else each :meth:`run` call has its own). Every
    attribute but :meth:`run` is the wrapped expert's (``names``, ``class_weights``, ...).
    ``store=None`` runs every item (still counted as misses).

    >>> stored = StoredExpert(create_expert("timm"), store)          # doctest: +SKIP
    >>> stored.run(["a.jpg"])[0].evidence.dim, stored.last_run       # doctest: +SKIP
    (1280, StoreRun(hits=1, misses=0, failed=0))
    """

    # Not Expert.__init__: weights, device and limits are the wrapped expert's (see __getattr__).
    def __init__(
        self,
        expert: Expert,
        store: FeatureStore | None,
        *,
        variant: Mapping[str, Any] | None = None,
        transform: Transform | None = None,
        hashes: FileHashes | None = None,
    ) -> None:
        self.expert = expert
        self.store = store
        self.variant = variant
        self.transform = transform
        self.hashes = hashes
        self._last = threading.local()  # per thread: the planner may run two tools at once

    def __getattr__(self, attr: str) -> Any:
        expert = self.__dict__.get("expert")
        if expert is None or attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(expert, attr)

    def __repr__(self) -> str:
        return f"StoredExpert({self.expert!r}, {self.store!r})"

    # ------------------------------------------------------------------ the wrapped expert's identity
    # Expert defines these on the class, so __getattr__ would never be asked for them.

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.expert.name

    @property
    def evidence_type(self) -> type:  # type: ignore[override]
        return self.expert.evidence_type

    @property
    def offline_hint(self) -> str:  # type: ignore[override]
        return self.expert.offline_hint

    @property
    def weights_tag(self) -> str:
        return self.expert.weights_tag

    @property
    def config(self) -> dict[str, Any]:
        return self.expert.config

    @property
    def identity(self) -> dict[str, Any]:
        return self.expert.identity

    @property
    def intake_limits(self) -> dict[str, Any]:
        return self.expert.intake_limits

    @property
    def model(self) -> Any:
        return self.expert.model

    def _load(self) -> Any:
        return self.expert.model

    def load_image(self, source: ImageSource) -> LoadedImage:
        return self.expert.load_image(source)

    def predict(self, images: Sequence[Image.Image]) -> list[Any]:
        """The wrapped expert's raw forward (no store): ``run`` is the stored path."""
        return self.expert.predict(images)

    # ------------------------------------------------------------------ the stored path

    @property
    def last_run(self) -> StoreRun | None:
        """What this thread's last :meth:`run` did (None before the first)."""
        return getattr(self._last, "run", None)

    def run(self, sources: Iterable[ImageSource], *, progress: bool = False) -> list[ItemResult]:
        """One :class:`ItemResult` per input, in order, as ``expert.run`` gives; see :attr:`last_run`."""
        sources = list(sources)
        bar = _progress(len(sources), self.name) if progress else None
        try:
            results, _ = self.run_counted(sources, on_done=bar.update if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
        return results

    def run_counted(
        self, sources: Sequence[ImageSource], *, on_done: Callable[[int], None] | None = None
    ) -> tuple[list[ItemResult], StoreRun]:
        """:meth:`run` and what it did. ``on_done(n)`` is told as items finish (hits at once, misses per batch).

        Sources are hashed and looked up ``batch_size`` at a time, so at most about two batches of
        encoded bytes are held; misses are computed in full batches and each batch is stored at once,
        so an interrupted run keeps what it computed.
        """
        sources = list(sources)
        expert = self.expert
        hashes = self.hashes if self.hashes is not None else FileHashes()
        limits, identity, size = expert.intake_limits, expert.identity, expert.batch_size
        normalized = bool(expert.config.get("normalize", True))
        results: list[ItemResult | None] = [None] * len(sources)
        pending: list[tuple[int, str, Hashed]] = []  # misses waiting for a full batch
        hits = misses = 0
        for start in range(0, len(sources), size):
            window = range(start, min(start + size, len(sources)))
            keyed: dict[int, tuple[str, Hashed]] = {}
            for i in window:
                try:
                    hashed = hashes.hash(sources[i], **limits)
                except ImageError as err:
                    results[i] = ItemResult(i, describe_source(sources[i]), error=str(err), reason=err.reason)
                    continue
                keyed[i] = (feature_key(hashed.sha256, identity, variant=self.variant), hashed)
            found = self.store.get_many(k for k, _ in keyed.values()) if self.store is not None and keyed else {}
            for i, (key, hashed) in keyed.items():
                if key in found:
                    evidence = evidence_from_array(found[key], normalized=normalized)
                    results[i] = ItemResult(i, describe_source(sources[i]), hashed.sha256, evidence)
                    hits += 1
                else:
                    pending.append((i, key, hashed))
                    misses += 1
            if on_done is not None:
                on_done(sum(results[i] is not None for i in window))  # hits and unhashable inputs
            while len(pending) >= size:
                self._compute(sources, pending[:size], results, on_done)
                pending = pending[size:]
        if pending:
            self._compute(sources, pending, results, on_done)
        done: list[ItemResult] = results  # type: ignore[assignment]
        run = StoreRun(hits=hits, misses=misses, failed=sum(not r.ok for r in done))
        self._last.run = run
        return done, run

    def _compute(
        self,
        sources: Sequence[ImageSource],
        batch: Sequence[tuple[int, str, Hashed]],
        results: list[ItemResult | None],
        on_done: Callable[[int], None] | None,
    ) -> None:
        inputs = [self._prepared(hashed) for _, _, hashed in batch]
        new_entries = {}
        for (i, key, hashed), r in zip(batch, self.expert.run(inputs)):
            results[i] = ItemResult(i, describe_source(sources[i]), hashed.sha256, r.evidence, r.error, r.reason)
            if r.ok:
                new_entries[key] = evidence_to_array(r.evidence)
        if self.store is not None and new_entries:
            self.store.put_many(new_entries)
        if on_done is not None:
            on_done(len(batch))

    def _prepared(self, hashed: Hashed) -> ImageSource:
        if self.transform is None:
            return hashed.input  # decoded by the expert, one batch at a time (its pixel cap holds)
        try:
            image = self.expert.load_image(hashed.input)
        except ImageError:
            return hashed.input  # let expert.run report it the usual way
        return LoadedImage(self.transform(image.image, hashed.sha256), hashed.sha256, image.source)


def run_through_store(
    expert: Expert,
    sources: Sequence[ImageSource],
    store: FeatureStore | None,
    *,
    variant: Mapping[str, Any] | None = None,
    transform: Transform | None = None,
    on_done: Callable[[int], None] | None = None,
    hashes: FileHashes | None = None,
) -> tuple[list[ItemResult], StoreRun]:
    """``expert.run(sources)`` through ``store``, and what the store did: :meth:`StoredExpert.run_counted`."""
    stored = StoredExpert(expert, store, variant=variant, transform=transform, hashes=hashes)
    return stored.run_counted(sources, on_done=on_done)


def feature_matrix(results: Sequence[ItemResult]) -> tuple[np.ndarray, np.ndarray]:
    """Stack the feature vectors of successful items: ``(n_ok, D)`` float32 and the boolean ok-mask."""
    ok = np.array([r.ok for r in results], dtype=bool)
    vectors = [r.evidence.vector for r in results if r.ok]
    if not vectors:
        return np.zeros((0, 0), dtype=np.float32), ok
    return np.stack(vectors).astype(np.float32), ok


def _progress(total: int, desc: str):
    from workflows.progress import Progress  # a bar on a terminal, plain lines in a log

    return Progress(desc, total, unit="images")
