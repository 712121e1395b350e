"""Running an expert *through* the feature store: only the misses reach the model.

    results = run_through_store(expert, paths, store)     # same ItemResults as expert.run(paths)

Keys are :func:`cache.keys.feature_key` of the image's content hash and the
expert's identity (name, weights tag, preprocessing config); values are the
evidence encoded by :func:`experts.evidence.evidence_to_array`. A hit costs a
file hash and a read, no decode and no forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from cache.keys import feature_key
from cache.store import FeatureStore
from experts import Expert, ImageError, ItemResult
from experts.evidence import evidence_from_array, evidence_to_array
from experts.images import ImageSource, LoadedImage, content_sha256, describe_source

#: ``(image, sha256) -> image``: derive the input actually fed to the expert (e.g. a seeded augmentation).
Transform = Callable[[Image.Image, str], Image.Image]


@dataclass(frozen=True)
class StoreRun:
    """What one pass through the store did: answered from the store, computed by the model, failed."""

    hits: int
    misses: int
    failed: int


def run_through_store(
    expert: Expert,
    sources: Sequence[ImageSource],
    store: FeatureStore | None,
    *,
    variant: Mapping[str, Any] | None = None,
    transform: Transform | None = None,
    on_done: Callable[[int], None] | None = None,
) -> tuple[list[ItemResult], StoreRun]:
    """``expert.run(sources)``, answered from ``store`` where possible; new results are written back.

    ``variant`` + ``transform`` store derived inputs (augmented views) under
    their own keys: the transform only runs on misses. Misses run one batch at a
    time and each batch is stored at once, so an interrupted run keeps what it
    computed; ``on_done(n)`` is called as items finish (hits at once, misses per batch).
    """
    results: list[ItemResult | None] = [None] * len(sources)
    keys: dict[int, str] = {}
    shas: dict[int, str] = {}
    for i, src in enumerate(sources):
        try:
            shas[i] = content_sha256(src, **expert.intake_limits)
        except ImageError as err:
            results[i] = ItemResult(i, describe_source(src), error=str(err), reason=err.reason)
            continue
        keys[i] = feature_key(shas[i], expert.identity, variant=variant)

    found = store.get_many(keys.values()) if store is not None else {}
    normalized = bool(expert.config.get("normalize", True))
    for i, key in keys.items():
        if key in found:
            evidence = evidence_from_array(found[key], normalized=normalized)
            results[i] = ItemResult(i, describe_source(sources[i]), shas[i], evidence)

    missing = [i for i in keys if results[i] is None]
    if on_done is not None:
        on_done(len(sources) - len(missing))  # hits and unhashable inputs are finished already
    for start in range(0, len(missing), expert.batch_size):
        batch = missing[start : start + expert.batch_size]
        inputs = [_prepared(expert, sources[i], shas[i], transform) for i in batch]
        new_entries = {}
        for i, r in zip(batch, expert.run(inputs)):
            results[i] = ItemResult(i, describe_source(sources[i]), shas[i], r.evidence, r.error, r.reason)
            if r.ok:
                new_entries[keys[i]] = evidence_to_array(r.evidence)
        if store is not None and new_entries:
            store.put_many(new_entries)
        if on_done is not None:
            on_done(len(batch))
    done: list[ItemResult] = results  # type: ignore[assignment]
    return done, StoreRun(hits=len(keys) - len(missing), misses=len(missing), failed=sum(not r.ok for r in done))


def feature_matrix(results: Sequence[ItemResult]) -> tuple[np.ndarray, np.ndarray]:
    """Stack the feature vectors of successful items: ``(n_ok, D)`` float32 and the boolean ok-mask."""
    ok = np.array([r.ok for r in results], dtype=bool)
    vectors = [r.evidence.vector for r in results if r.ok]
    if not vectors:
        return np.zeros((0, 0), dtype=np.float32), ok
    return np.stack(vectors).astype(np.float32), ok


def _prepared(expert: Expert, source: ImageSource, sha: str, transform: Transform | None) -> ImageSource:
    if transform is None:
        return source
    try:
        image = expert.load_image(source)
    except ImageError:
        return source  # let expert.run report it the usual way
    return LoadedImage(transform(image.image, sha), sha, image.source)
