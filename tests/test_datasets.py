"""ImageFolder reading (workflows.datasets.image_folder): class order, extensions, order of files,
hidden files, and the errors for a missing, empty or mismatched tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from experts.errors import ConfigError
from workflows.datasets import image_folder


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def test_classes_are_the_sorted_folders_and_files_come_in_path_order(tmp_path):
    touch(
        tmp_path,
        "bees/b.JPG",
        "bees/a.png",
        "bees/notes.txt",
        "ants/z/y.jpeg",
        "ants/z.jpg",
        "ants/deeper/x.webp",
        "ants/.hidden.jpg",
        "ants/._z.jpg",
        "ants/.cache/c.jpg",
        "cats/readme.md",
    )
    data = image_folder(tmp_path)
    assert data.classnames == ("ants", "bees", "cats")  # an empty class folder is still a class
    rel = [str(Path(p).relative_to(tmp_path)) for p in data.paths]
    assert rel == ["ants/deeper/x.webp", "ants/z/y.jpeg", "ants/z.jpg", "bees/a.png", "bees/b.JPG"]
    assert data.labels == (0, 0, 0, 1, 1)


def test_given_classnames_set_the_labels_and_the_order(tmp_path):
    touch(tmp_path, "ants/a.jpg", "bees/b.jpg")
    data = image_folder(tmp_path, ("bees", "ants", "wasps"))
    assert data.classnames == ("bees", "ants", "wasps")
    assert [Path(p).name for p in data.paths] == ["b.jpg", "a.jpg"] and data.labels == (0, 1)
    with pytest.raises(ConfigError, match=r"class folders \['bees'\] are not among \['ants'\]"):
        image_folder(tmp_path, ("ants",))


def test_a_missing_or_empty_tree_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not a directory of class folders"):
        image_folder(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no images found in class folders"):
        image_folder(tmp_path)
    touch(tmp_path, "ants/readme.txt", "loose.jpg")
    with pytest.raises(ConfigError, match="no images found in class folders"):
        image_folder(tmp_path)
