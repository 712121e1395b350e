"""Labelled image sets: ImageFolder trees, CoOp-style split files, k-shot sampling.

>>> splits = load_splits("../shared/data/hymenoptera_data")    # doctest: +SKIP
>>> sorted(splits), splits["train"].classnames                  # doctest: +SKIP
(['train', 'val'], ['ants', 'bees'])
"""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from experts.errors import ConfigError
from workflows.inputs import IMAGE_SUFFIXES


@dataclass(frozen=True)
class LabelledImages:
    """Image paths with integer labels into ``classnames``."""

    paths: tuple[str, ...]
    labels: tuple[int, ...]
    classnames: tuple[str, ...]

    def __post_init__(self):
        if len(self.paths) != len(self.labels):
            raise ConfigError(f"{len(self.paths)} paths but {len(self.labels)} labels")
        bad = [lab for lab in self.labels if not 0 <= lab < len(self.classnames)]
        if bad:
            raise ConfigError(f"labels {sorted(set(bad))[:5]} are outside 0..{len(self.classnames) - 1}")

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices) -> LabelledImages:
        idx = list(indices)
        return LabelledImages(tuple(self.paths[i] for i in idx), tuple(self.labels[i] for i in idx), self.classnames)

    def __add__(self, other: LabelledImages) -> LabelledImages:
        """Both sets, e.g. real support plus generated images (the class lists must match)."""
        if other.classnames != self.classnames:
            raise ConfigError(f"cannot join sets with classes {self.classnames} and {other.classnames}")
        return LabelledImages(self.paths + other.paths, self.labels + other.labels, self.classnames)

    def per_class(self) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = defaultdict(list)
        for i, lab in enumerate(self.labels):
            groups[lab].append(i)
        return dict(groups)


def image_folder(root: str | Path, classnames: tuple[str, ...] | None = None) -> LabelledImages:
    """``root/<class>/<image>``; classes are the sorted sub-directory names (or ``classnames``, in that order).

    The walk follows symlinks, as torchvision's ``ImageFolder`` does; the rules: an image is a file with
    one of :data:`IMAGE_SUFFIXES` (any case), hidden files and folders (``.DS_Store``, macOS ``._x.jpg``,
    ``.ipynb_checkpoints/``) are skipped, a class folder with no images is still a class, and each class's
    files come in path order. (Written out rather than torchvision's ``find_classes`` / ``make_dataset``:
    importing ``torchvision.datasets`` imports all of torchvision and ``torch._dynamo``, 1 s of a warm
    ``fewshot eval`` that otherwise never touches torchvision.)

    >>> image_folder("no/such/dir")
    Traceback (most recent call last):
    ...
    experts.errors.ConfigError: no/such/dir: not a directory of class folders
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: not a directory of class folders")
    found = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not found and not classnames:
        raise ConfigError(f"{root}: no images found in class folders")
    classnames = tuple(classnames or found)
    missing = set(found) - set(classnames)
    if missing:
        raise ConfigError(f"{root}: class folders {sorted(missing)} are not among {list(classnames)}")

    samples = []
    for label, name in enumerate(classnames):
        for folder, dirs, files in os.walk(root / name, followlinks=True):
            dirs[:] = [d for d in dirs if not d.startswith(".")]  # pruned: never walked into
            samples += [
                (Path(folder) / f, label)
                for f in files
                if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES
            ]
    # the order within a class is by path (a k-shot sample of a seed depends on it: keep it stable)
    samples.sort(key=lambda sample: (sample[1], sample[0]))
    if not samples:
        raise ConfigError(f"{root}: no images found in class folders")
    return LabelledImages(tuple(str(p) for p, _ in samples), tuple(label for _, label in samples), classnames)


def coop_split(split_file: str | Path, image_root: str | Path) -> dict[str, LabelledImages]:
    """CoOp split JSON: ``{"train": [[relpath, label, classname], ...], "val": ..., "test": ...}``."""
    data = json.loads(Path(split_file).read_text())
    names: dict[int, str] = {}
    for rows in data.values():
        for _, label, name in rows:
            if names.setdefault(int(label), name) != name:
                raise ConfigError(f"{split_file}: label {label} is both {names[int(label)]!r} and {name!r}")
    if sorted(names) != list(range(len(names))):
        raise ConfigError(f"{split_file}: labels must be 0..N-1, got {sorted(names)[:10]}")
    classnames = tuple(names[i] for i in range(len(names)))
    root = Path(image_root)
    return {
        split: LabelledImages(
            tuple(str(root / p) for p, _, _ in rows), tuple(int(lab) for _, lab, _ in rows), classnames
        )
        for split, rows in data.items()
    }


def load_splits(path: str | Path, image_root: str | Path | None = None) -> dict[str, LabelledImages]:
    """A split JSON (with ``image_root``), or a directory with ``train/`` (and ``val/``, ``test/``) ImageFolders."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"dataset {path} does not exist")
    if path.is_file():
        return coop_split(path, image_root or path.parent)
    splits = {}
    train = image_folder(path / "train") if (path / "train").is_dir() else None
    if train is None:
        raise ConfigError(f"{path}: expected train/ (and val/ or test/) class folders, or a split JSON file")
    splits["train"] = train
    for name in ("val", "test"):
        if (path / name).is_dir():
            splits[name] = image_folder(path / name, train.classnames)
    return splits


def k_shot_indices(data: LabelledImages, k: int, seed: int, exclude: set[int] | frozenset = frozenset()) -> list[int]:
    """Indices of ``k`` images per class (all if a class has fewer), chosen with ``seed``, skipping ``exclude``."""
    if k < 1:
        raise ConfigError(f"shots must be >= 1, got {k}")
    rng = random.Random(seed)
    chosen: list[int] = []
    for _label, members in sorted(data.per_class().items()):
        pool = [i for i in members if i not in exclude]
        chosen.extend(sorted(rng.sample(pool, min(k, len(pool)))))
    return chosen


def sample_k_shot(data: LabelledImages, k: int, seed: int) -> LabelledImages:
    """``k`` labelled images per class, reproducibly chosen with ``seed``."""
    return data.subset(k_shot_indices(data, k, seed))


def few_shot_splits(
    data: dict[str, LabelledImages], shots: int, seed: int, val_shots: int | None = None
) -> tuple[LabelledImages, LabelledImages, LabelledImages]:
    """(support, validation, test) for one run.

    Support: ``shots`` per class from ``train``. Validation: the dataset's ``val``
    split when it also has a ``test`` split; otherwise ``val_shots`` per class
    (default ``max(shots, 4)``) from the rest of ``train``. Test: ``test``, else ``val``.
    Validation and test never overlap, and hyper-parameters are chosen on validation only.
    """
    train = data["train"]
    taken = k_shot_indices(train, shots, seed)
    support = train.subset(taken)
    if "test" in data and "val" in data:
        return support, data["val"], data["test"]
    val = train.subset(k_shot_indices(train, val_shots or max(shots, 4), seed + 10_007, exclude=set(taken)))
    test = data.get("test") or data.get("val")
    if test is None:
        raise ConfigError("the dataset needs a val/ or test/ split to evaluate on")
    return support, val, test
