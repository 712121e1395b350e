"""DINOv2 through torch.hub, from a local hub repo the test writes (real ViT-S/14 architecture, random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import write_dinov2_hub

from experts import ConfigError, WeightsNotFoundError, create_expert


@pytest.fixture(scope="module")
def hub_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("dinov2_repo")
    return write_dinov2_hub(repo)


@pytest.fixture(scope="module")
def dino(hub_repo):
    return create_expert("dinov2", repo=str(hub_repo), weights=None, patches=True, device="cpu", offline=True).load()


def test_cls_and_patch_features(dino, bus_jpg, zidane_jpg):
    results = dino.run([bus_jpg, zidane_jpg])
    for r in results:
        f = r.evidence
        assert f.dim == 384 and f.patches.shape == (256, 384)  # 224/14 = 16 → 16x16 patches
        assert np.linalg.norm(f.vector) == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(results[0].evidence.vector, results[1].evidence.vector)
    np.testing.assert_allclose(dino(bus_jpg).vector, results[0].evidence.vector, atol=1e-5)


def test_local_checkpoint_loads_with_weights_only(dino, hub_repo, tmp_path, bus_jpg):
    torch.save(dino.model.state_dict(), tmp_path / "dinov2_vits14_pretrain.pth")
    other = create_expert(
        "dinov2", repo=str(hub_repo), weights=str(tmp_path / "dinov2_vits14_pretrain.pth"), device="cpu", offline=True
    )
    np.testing.assert_allclose(other(bus_jpg).vector, dino(bus_jpg).vector, atol=1e-6)
    assert other(bus_jpg).patches is None  # patches only when asked for


def test_uncached_github_repo_offline_says_what_to_clone(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    dino = create_expert("dinov2", weights=None, device="cpu", offline=True)
    with pytest.raises(WeightsNotFoundError, match="Clone facebookresearch/dinov2"):
        dino.load()


def test_bad_config(tmp_path):
    with pytest.raises(ConfigError, match="multiple of the patch size"):
        create_expert("dinov2", weights=None, image_size=225)
    with pytest.raises(ConfigError, match="no hubconf.py"):
        create_expert("dinov2", repo=str(tmp_path), weights=None).load()


@pytest.mark.parametrize("env_shared", [True, False])
def test_vendored_repo_is_found_from_settings_not_from_the_working_directory(env_shared, tmp_path, monkeypatch):
    from workflows.settings import vendored_dinov2_repo

    shared = tmp_path / "shared"
    write_dinov2_hub(shared / "vendor" / "dinov2")
    monkeypatch.chdir(shared.parent)  # a ../shared or ./shared in the working directory means nothing
    environ = {"EXPERTBRIDGE_SHARED": str(shared)} if env_shared else {"EXPERTBRIDGE_SHARED": str(tmp_path / "none")}
    found = vendored_dinov2_repo(environ)
    if env_shared:
        assert found == str(shared / "vendor" / "dinov2")
    else:
        assert found != str(shared / "vendor" / "dinov2")


def test_fallback_repo_only_replaces_the_official_repo_offline(tmp_path, monkeypatch):
    hub = write_dinov2_hub(tmp_path / "vendored")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))

    def dino(**kw):
        return create_expert("dinov2", weights=None, fallback_repo=str(hub), device="cpu", **kw)

    assert dino(offline=True)._hub_source() == (str(hub), "local")
    assert dino(offline=True).load().model is not None
    assert dino(offline=False)._hub_source() == ("facebookresearch/dinov2", "github")  # online: Meta's repo
    with pytest.raises(WeightsNotFoundError, match="not cached"):  # someone else's repo name: no substitute
        dino(offline=True, repo="someone/dinov2-fork")._hub_source()
