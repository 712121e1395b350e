"""The feature side of few-shot: images → features of every expert through the store, and the
support set's augmented views (Tip-Adapter's random resized crops and flips, stored like any feature).

>>> view_inputs(0)
{}
>>> sorted(view_inputs(3))
['transform', 'variant']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from cache.store import FeatureStore
from experts import Expert, ItemResult
from experts.file_hashes import FileHashes
from experts.images import ImageSource
from workflows.store_runner import StoredExpert


@dataclass
class Features:
    """Features of a list of images per branch, for the items every branch could read."""

    by_branch: dict[str, torch.Tensor]
    ok: np.ndarray  # bool per input
    errors: dict[int, str]
    reasons: dict[int, str] = field(default_factory=dict)  # input index → ImageError reason of a dropped item


def augmentation(view: int, seed: int = 0) -> Callable[[Image.Image, str], Image.Image]:
    """Tip-Adapter's support augmentation (random resized crop, scale 0.5–1, and flip), seeded per image and view.

    The same (image, view) always gives the same pixels, so augmented features can be stored and reused.
    View 0 is the image itself, so every key keeps the un-augmented feature in its average.
    """
    if view == 0:
        return lambda image, sha256: image
    ops: list = []  # the crop and the flip, built on the first image that needs them

    def apply(image: Image.Image, sha256: str) -> Image.Image:
        if not ops:
            # not at import time: importing torchvision imports torch._dynamo (1.5 s measured), and a sweep
            # whose views are all in the store never calls this
            from torchvision import transforms

            bicubic = transforms.InterpolationMode.BICUBIC
            ops.extend(
                [
                    transforms.RandomResizedCrop(224, scale=(0.5, 1.0), interpolation=bicubic),
                    transforms.RandomHorizontalFlip(0.5),
                ]
            )
        crop, flip = ops
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((int(sha256[:12], 16) + 7919 * view + 104_729 * seed) % (2**63))
            return flip(crop(image))

    return apply


def view_inputs(view: int) -> dict[str, Any]:
    """``extract`` arguments for augmented view ``view`` (0 = the image itself, stored as plain features).

    Views depend only on the image and the view number, not on a run's seed, so every seed, shot
    count and method of a sweep (and every later fit) reuses the same stored views.
    """
    if view == 0:
        return {}
    return {"variant": {"aug": "rrc0.5-flip", "view": view, "seed": 0}, "transform": augmentation(view)}


def extract_features(
    experts: Mapping[str, Expert],
    store: FeatureStore | None,
    sources: Sequence[ImageSource],
    *,
    variant: Mapping | None = None,
    transform=None,
    on_done: Callable[[int], None] | None = None,
    hashes: FileHashes | None = None,
) -> Features:
    """Features of every branch (name → expert) through ``store``; an item failing in any branch is dropped
    with its error (:meth:`workflows.fewshot.FewShotClassifier.extract` calls this with its own experts).

    ``variant``/``transform``: an augmented view (:func:`view_inputs`). ``on_done(n)`` is told as items
    finish, once per branch (for a progress count of ``len(sources) × branches``). ``hashes``: file hashes
    shared with other calls of the same run (else shared by this call's branches), so each file is read
    once however many branches and views ask for it.
    """
    ok = np.ones(len(sources), dtype=bool)
    errors: dict[int, str] = {}
    reasons: dict[int, str] = {}
    results: dict[str, list[ItemResult]] = {}
    hashes = hashes if hashes is not None else FileHashes()
    for name, expert in experts.items():
        stored = StoredExpert(expert, store, variant=variant, transform=transform, hashes=hashes)
        results[name], _ = stored.run_counted(sources, on_done=on_done)
        for r in results[name]:
            if not r.ok:
                ok[r.index] = False
                errors.setdefault(r.index, f"{name}: {r.error}")
                reasons.setdefault(r.index, r.reason or "expert_failed")
    by_branch = {
        name: torch.from_numpy(np.stack([r.evidence.vector for r, good in zip(rs, ok) if good]))
        if ok.any()
        else torch.zeros(0, 0)
        for name, rs in results.items()
    }
    return Features(by_branch, ok, errors, reasons)
