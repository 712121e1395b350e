"""Files the user only reads never decide what code runs or what is fetched.

Each hostile file here carries a payload that writes a marker file when it runs (a ``hubconf.py``,
a transformers ``auto_map`` module, a pickle whose ``__reduce__`` calls ``exec``), and every test
runs with the network refused and recorded (``socket`` patched in-process; a ``sitecustomize``
in the subprocess). Each one asserts the clear error, that the marker was NOT written, and that
no connection or DNS lookup was attempted.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from experts import ConfigError, create_expert
from experts.stored import stored_spec
from workflows.settings import Settings

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the hostile material


@pytest.fixture
def marker(tmp_path) -> Path:
    """Written by every payload below when (and only when) it runs."""
    return tmp_path / "PWNED"


@pytest.fixture
def network(monkeypatch) -> list:
    """Every attempted connection or DNS lookup, each refused."""
    attempts: list = []

    def refuse(what):
        attempts.append(what)
        raise OSError(f"network blocked by the test: {what!r}")

    monkeypatch.setattr(socket.socket, "connect", lambda self, addr: refuse(addr))
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, addr: refuse(addr))
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: refuse(args[:2]))
    return attempts


def assert_refused(load, *, marker: Path | None, network: list, match: str) -> ConfigError:
    """Run ``load``; whatever it raised, first check that no payload ran and no network was touched."""
    try:
        load()
    except Exception as exc:  # noqa: BLE001 - judged below, after the side effects
        error: BaseException | None = exc
    else:
        error = None
    assert marker is None or not marker.exists(), f"the payload ran (then: {error!r})"
    assert network == [], f"the network was touched: {network} (then: {error!r})"
    assert isinstance(error, ConfigError), f"expected a ConfigError, got {error!r}"
    assert re.search(match, str(error)), f"{match!r} not in {str(error)!r}"
    return error


def payload(marker: Path) -> str:
    return f"import pathlib; pathlib.Path({str(marker)!r}).write_text('pwned')"


class _RunsCode:
    """Unpickling this calls ``exec(code)``: what a hostile ``.pt`` checkpoint does."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def pickle_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"model": _RunsCode(payload(marker)), "epoch": 1}, path)
    return path


@pytest.fixture
def evil_hub(tmp_path, marker) -> Path:
    """A torch.hub repo whose hubconf.py runs the payload on import."""
    hub = tmp_path / "evil_hub"
    hub.mkdir()
    (hub / "hubconf.py").write_text(
        payload(marker) + "\n\ndef dinov2_vits14(pretrained=False):\n    raise SystemExit\n"
    )
    return hub


@pytest.fixture
def evil_remote_code(tmp_path, marker) -> Path:
    """A transformers model directory whose auto_map module runs the payload (with trust_remote_code)."""
    model = tmp_path / "evil_model"
    model.mkdir()
    auto_map = {k: f"evil_code.{k}" for k in ("AutoConfig", "AutoProcessor", "AutoModelForImageTextToText")}
    (model / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": auto_map}))
    (model / "evil_code.py").write_text(payload(marker) + "\n")
    return model


@pytest.fixture
def image(tmp_path) -> str:
    path = tmp_path / "query.png"
    Image.new("RGB", (64, 48), (120, 90, 30)).save(path)
    return str(path)


def user_settings(tmp_path, **kw) -> Settings:
    """What the user configured: offline, CPU, nothing trusted."""
    return Settings(
        **{"device": "cpu", "offline": True, "jobs_dir": tmp_path / "jobs", "store_dir": tmp_path / "s", **kw}
    )


def saved_classifier(directory: Path, spec: dict, dim: int = 8) -> Path:
    """A few-shot model directory exactly as `FewShotClassifier.save` writes it, but with ``spec`` in it.

    The identity is the one the spec really produces, so without the guard the load would succeed
    and the first prediction would load (run) the expert.
    """
    from workflows.fewshot import FORMAT

    fields = {k: v for k, v in spec.items() if k != "name"}
    try:
        identity = create_expert(spec["name"], **fields).identity  # building an expert never loads it
    except ConfigError:  # an argument no expert takes: no identity to forge
        identity = {}
    directory.mkdir(parents=True)
    keys = torch.nn.functional.normalize(torch.randn(2, dim), dim=-1)
    save_file({"keys.branch": keys, "labels": torch.tensor([0, 1])}, str(directory / "model.safetensors"))
    config = {
        "format": FORMAT,
        "classnames": ["ants", "bees"],
        "method": "cache",
        "fusion": "sum",
        "prior": "none",
        "alpha": 1.0,
        "beta": 5.5,
        "gda_alpha": 1.0,
        "clip_branch": None,
        "branches": [{"name": "branch", "spec": spec, "identity": identity}],
        "report": {},
    }
    (directory / "config.json").write_text(json.dumps(config))
    return directory


# The hostile expert specs a saved model (or job record) may carry, and the field each must be refused for.
HOSTILE_SPECS = {
    "local hubconf.py": (lambda t: {"name": "dinov2", "repo": str(t["hub"]), "weights": None}, "repo"),
    "github hub, trusted, online": (
        lambda t: {
            "name": "dinov2",
            "trust_repo": True,
            "repo": "evil-org/evil-hub",
            "offline": False,
            "weights": "pretrained",
        },
        "trust_repo",
    ),
    "trust_remote_code": (
        lambda t: {"name": "captioner", "weights": str(t["remote"]), "trust_remote_code": True},
        "trust_remote_code",
    ),
    "offline=false": (
        lambda t: {"name": "dinov2", "offline": False, "weights": "pretrained"},
        "offline",
    ),
    "fallback hub repo": (
        lambda t: {"name": "dinov2", "fallback_repo": str(t["hub"]), "weights": None},
        "fallback_repo",
    ),
    "unknown field": (lambda t: {"name": "timm", "model": "resnet18", "weights": None, "evil": 1}, "evil"),
}


@pytest.fixture
def hostile(evil_hub, evil_remote_code):
    return {"hub": evil_hub, "remote": evil_remote_code}


# --------------------------------------------------------------------------- saved few-shot models


@pytest.mark.parametrize("case", sorted(HOSTILE_SPECS))
def test_saved_model_with_hostile_expert_fields_is_refused(case, hostile, tmp_path, marker, network, image):
    from workflows.fewshot import FewShotClassifier

    make, field = HOSTILE_SPECS[case]
    model = saved_classifier(tmp_path / "model", make(hostile))
    assert_refused(
        lambda: FewShotClassifier.load(model, settings=user_settings(tmp_path)).predict([image]),
        marker=marker,
        network=network,
        match=re.escape(f"{model / 'config.json'}: expert ") + f".*field {field!r} may not come from a file",
    )


@pytest.mark.parametrize("weights", ["pickle.pt", "hubconf.py"])
def test_saved_model_naming_a_pickle_or_python_file_as_weights_runs_nothing(
    weights, evil_hub, tmp_path, marker, network, image
):
    """A stored weights path is read as tensors only (torch.load weights_only=True)."""
    from workflows.fewshot import FewShotClassifier

    path = pickle_checkpoint(tmp_path / "pickle.pt", marker) if weights == "pickle.pt" else evil_hub / "hubconf.py"
    model = saved_classifier(tmp_path / "model", {"name": "timm", "model": "resnet18", "weights": str(path)})
    assert_refused(
        lambda: FewShotClassifier.load(model, settings=user_settings(tmp_path)).predict([image]),
        marker=marker,
        network=network,
        match="not a loadable tensor checkpoint",
    )


def test_saved_model_naming_hub_weights_online_is_refused(tmp_path, network, image):
    """Online, a hub id in a file would choose what is downloaded; offline it only reads the local cache."""
    from workflows.fewshot import FewShotClassifier

    model = saved_classifier(tmp_path / "model", {"name": "timm", "model": "resnet18", "weights": "evil-org/weights"})
    assert_refused(
        lambda: FewShotClassifier.load(model, settings=user_settings(tmp_path, offline=False)).predict([image]),
        marker=None,
        network=network,
        match="'evil-org/weights' is a hub id.*may not decide what is downloaded",
    )
    offline = FewShotClassifier.load(model, settings=user_settings(tmp_path))  # nothing fetched: allowed
    assert offline.experts["branch"].weights.value == "evil-org/weights"


def test_save_writes_only_stored_fields_and_settings_supply_the_rest(tmp_path):
    """A classifier built with device/offline/batch_size saves none of them; loading takes them from settings."""
    from workflows.fewshot import FewShotClassifier

    expert = create_expert("timm", model="resnet18", weights=None, device="cpu", offline=True, batch_size=3)
    assert stored_spec(expert) == {"name": "timm", "model": "resnet18", "weights": None}
    model = saved_classifier(tmp_path / "model", stored_spec(expert))
    loaded = FewShotClassifier.load(model, settings=user_settings(tmp_path, batch_size=5)).experts["branch"]
    assert (loaded.batch_size, loaded.offline, str(loaded.device)) == (5, True, "cpu")
    assert loaded.identity == expert.identity


@pytest.mark.parametrize("text", ["{not json", "[]", '{"format": "expertbridge.fewshot/1", "branches": {}}'])
def test_malformed_saved_model_config_is_a_config_error(tmp_path, text):
    from workflows.fewshot import FewShotClassifier

    model = saved_classifier(tmp_path / "model", {"name": "timm", "model": "resnet18", "weights": None})
    (model / "config.json").write_text(text)
    with pytest.raises(ConfigError, match="config|classifier"):
        FewShotClassifier.load(model, settings=user_settings(tmp_path))


def test_nested_expert_specs_are_checked_and_get_trust_only_from_settings(tmp_path, marker, network):
    """A stored dense captioner can neither name trust_pickle for its detector nor inherit trust it was not given."""
    from experts.stored import expert_from_stored

    evil = str(pickle_checkpoint(tmp_path / "evil.pt", marker))
    source = str(tmp_path / "config.json")
    runtime = user_settings(tmp_path).expert_kwargs
    assert_refused(
        lambda: expert_from_stored(
            {"name": "dense_captioner", "detector": {"weights": evil, "trust_pickle": True}},
            source=source,
            runtime=runtime,
        ),
        marker=marker,
        network=network,
        match=re.escape(f"{source}: expert 'dense_captioner'.detector: field 'trust_pickle' may not come"),
    )
    assert_refused(
        lambda: expert_from_stored(
            {"name": "dense_captioner", "detector": {"weights": evil}}, source=source, runtime=runtime
        ).load(),
        marker=marker,
        network=network,
        match="yolo: refusing to load .*evil.pt",
    )


# --------------------------------------------------------------------------- job records and batch messages


def test_bridge_job_record_with_a_hubconf_repo_is_refused(evil_hub, tmp_path, marker, network):
    from workflows.bridging import BridgeJob

    spec = {"name": "dinov2", "repo": str(evil_hub), "weights": None}
    job = tmp_path / "bridge"
    job.mkdir()
    identity = create_expert("dinov2", repo=str(evil_hub), weights=None).identity
    (job / "job.json").write_text(json.dumps({"expert": spec, "identity": identity, "prompt": "<image>"}))
    assert_refused(
        lambda: BridgeJob.load(job, settings=user_settings(tmp_path)),
        marker=marker,
        network=network,
        match=re.escape(f"{job / 'job.json'}: expert 'dinov2': field 'repo' may not come from a file"),
    )


def test_bridge_record_naming_a_hub_lm_online_is_refused(tmp_path, network):
    from workflows.bridging import BridgeJob

    job = tmp_path / "bridge"
    job.mkdir()
    spec = {"name": "timm", "model": "resnet18", "weights": None}
    identity = create_expert("timm", model="resnet18", weights=None).identity
    (job / "job.json").write_text(json.dumps({"expert": spec, "identity": identity, "prompt": "<image>"}))
    (job / "bridge.json").write_text(json.dumps({"lm": "local:evil-org/evil-lm"}))
    assert_refused(
        lambda: BridgeJob.load(job, settings=user_settings(tmp_path, offline=False)),
        marker=None,
        network=network,
        match="bridge.json: field 'lm'.*'evil-org/evil-lm' is a hub id",
    )


def test_classify_job_naming_a_hostile_model_fails_at_submit_and_writes_nothing(
    hostile, tmp_path, marker, network, image
):
    from workflows.batch import Jobs

    model = saved_classifier(tmp_path / "model", HOSTILE_SPECS["local hubconf.py"][0](hostile))
    settings = user_settings(tmp_path)
    assert_refused(
        lambda: Jobs(settings).submit([image], task="classify", params={"model": str(model)}),
        marker=marker,
        network=network,
        match="field 'repo' may not come from a file",
    )
    assert not settings.jobs_dir.exists() or not any(settings.jobs_dir.iterdir())


def test_classify_message_forged_past_submit_is_refused_by_the_worker(hostile, tmp_path, marker, network, image):
    """A message put on the queue directly (never planned) names the model dir: the worker still refuses it."""
    from workflows.batch.kinds import ChunkContext, get_task_kind

    model = saved_classifier(tmp_path / "model", HOSTILE_SPECS["local hubconf.py"][0](hostile))
    ctx = ChunkContext(
        lane="classify",
        params={"model": str(model)},
        items=[(0, image)],
        settings=user_settings(tmp_path),
        store=None,
        experts=lambda name: pytest.fail("classify builds its experts from the model dir"),
    )
    kind = get_task_kind("classify")
    assert_refused(lambda: kind.run(ctx), marker=marker, network=network, match="field 'repo' may not come from a file")


# --------------------------------------------------------------------------- pickled YOLO weights


@pytest.mark.parametrize("name", ["evil.pt", "evil.pth", "evil.torchscript"])
def test_yolo_refuses_pickles_and_code_bearing_formats(name, tmp_path, marker, network, image):
    weights = pickle_checkpoint(tmp_path / name, marker)
    error = assert_refused(
        lambda: create_expert("yolo", weights=str(weights), offline=True, device="cpu").load(),
        marker=marker,
        network=network,
        match=f"yolo: refusing to load '.*{name}'",
    )
    assert "EXPERTBRIDGE_TRUST_PICKLE_WEIGHTS=1" in str(error) and "--trust-pickle" in str(error)
    assert "ONNX or TFLite" in str(error)


def test_yolo_tag_is_a_downloaded_pickle_and_needs_the_opt_in(network, monkeypatch):
    monkeypatch.delenv("YOLO_OFFLINE", raising=False)  # online, as a user would be: ultralytics would fetch the tag
    assert_refused(
        lambda: create_expert("yolo", weights="yolov8n.pt", offline=False, device="cpu").load(),
        marker=None,
        network=network,
        match="Ultralytics tag.*Python pickle.*EXPERTBRIDGE_TRUST_PICKLE_WEIGHTS=1",
    )
    create_expert("yolo", weights="yolov8n.pt", offline=False, device="cpu", trust_pickle=True)  # opted in: built


def test_data_only_exports_need_no_opt_in(tmp_path, yolo_weights):
    for name in ("m.onnx", "m.engine", "m_edgetpu.tflite", "best.pt.onnx"):
        (tmp_path / name).write_bytes(b"\0")
        create_expert("yolo", weights=str(tmp_path / name), offline=True)
    (tmp_path / "m_openvino_model").mkdir()
    create_expert("yolo", weights=str(tmp_path / "m_openvino_model"), offline=True)
    create_expert("yolo", weights=str(yolo_weights), offline=True)


def test_trust_pickle_setting_reaches_the_detector(clean_env):
    monkeypatch = clean_env
    monkeypatch.setenv("EXPERTBRIDGE_TRUST_PICKLE_WEIGHTS", "1")
    settings = Settings()
    assert settings.expert_kwargs("yolo")["trust_pickle"] is True
    assert settings.expert_kwargs("dense_captioner")["detector"]["trust_pickle"] is True
    monkeypatch.delenv("EXPERTBRIDGE_TRUST_PICKLE_WEIGHTS")
    assert Settings().expert_kwargs("yolo")["trust_pickle"] is False


# --------------------------------------------------------------------------- .env files


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No EXPERTBRIDGE_ENV_FILE and an empty user config dir; whatever the test (or the CLI) sets is undone."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for var in (
        "EXPERTBRIDGE_ENV_FILE",
        "EXPERTBRIDGE_DEVICE",
        "EXPERTBRIDGE_OFFLINE",
        "EXPERTBRIDGE_TRUST_PICKLE_WEIGHTS",
    ):
        monkeypatch.setenv(var, "")  # records the original value, so teardown restores it
        monkeypatch.delenv(var)
    return monkeypatch


def test_a_dotenv_in_the_working_directory_is_never_read(clean_env, tmp_path):
    (tmp_path / ".env").write_text("EXPERTBRIDGE_DEVICE=cuda:7\nEXPERTBRIDGE_TRUST_PICKLE_WEIGHTS=1\n")
    clean_env.chdir(tmp_path)
    settings = Settings()
    assert (settings.device, settings.trust_pickle_weights) == ("auto", False)


def test_dotenv_is_read_where_the_user_points_and_from_the_config_dir(clean_env, tmp_path):
    named = tmp_path / "mine.env"
    named.write_text("EXPERTBRIDGE_DEVICE=cuda:1\nEXPERTBRIDGE_OFFLINE=1\nEXPERTBRIDGE_ALLOW_URLS=0\n")
    clean_env.setenv("EXPERTBRIDGE_ENV_FILE", str(named))
    assert (Settings().device, Settings().offline) == ("cuda:1", True)  # restricting trust is fine in a .env
    clean_env.delenv("EXPERTBRIDGE_ENV_FILE")
    (tmp_path / "config" / "expertbridge").mkdir(parents=True)
    (tmp_path / "config" / "expertbridge" / ".env").write_text("EXPERTBRIDGE_DEVICE=cuda:2\n")
    assert Settings().device == "cuda:2"
    clean_env.setenv("EXPERTBRIDGE_ENV_FILE", str(tmp_path / "nope.env"))
    with pytest.raises(ConfigError, match="EXPERTBRIDGE_ENV_FILE=.*nope.env: no such file"):
        Settings()


@pytest.mark.parametrize(
    "line",
    [
        "EXPERTBRIDGE_TRUST_PICKLE_WEIGHTS=1",
        "expertbridge_allow_urls=true",
        "EXPERTBRIDGE_OFFLINE=0",
        "EXPERTBRIDGE_DINOV2_REPO=/tmp/evil_hub",
    ],
)
def test_a_dotenv_may_not_grant_trust(clean_env, tmp_path, line):
    env = tmp_path / "mine.env"
    env.write_text(f"EXPERTBRIDGE_DEVICE=cpu\n{line}\n")
    clean_env.setenv("EXPERTBRIDGE_ENV_FILE", str(env))
    var = line.split("=")[0].upper()
    with pytest.raises(ConfigError, match=f"{env}: {var}=.* grants trust, so it may not come from a .env file"):
        Settings()


def test_cli_flags_point_at_an_env_file_and_grant_pickle_trust(clean_env, tmp_path):
    from workflows.cli import app

    env = tmp_path / "mine.env"
    env.write_text("EXPERTBRIDGE_TRUST_PICKLE_WEIGHTS=1\n")
    result = CliRunner().invoke(app, ["--env-file", str(env), "experts"])
    assert result.exit_code == 2 and "grants trust" in result.output and "Traceback" not in result.output
    clean_env.delenv("EXPERTBRIDGE_ENV_FILE")
    result = CliRunner().invoke(app, ["--trust-pickle", "experts"])
    assert result.exit_code == 0 and os.environ["EXPERTBRIDGE_TRUST_PICKLE_WEIGHTS"] == "1"


SITECUSTOMIZE = """
import pathlib, socket
def _refuse(*args, **kwargs):
    pathlib.Path({marker!r}).write_text(repr(args))
    raise OSError("network blocked by the test")
socket.socket.connect = socket.socket.connect_ex = _refuse
socket.getaddrinfo = _refuse
"""


@pytest.mark.slow
def test_planted_dotenv_and_pickle_in_the_working_dir_run_nothing(tmp_path, marker, image):
    """`expertbridge run yolo` started in a downloaded folder holding a .env and a hostile .pt."""
    folder = tmp_path / "downloaded"
    folder.mkdir()
    evil = pickle_checkpoint(folder / "best.pt", marker)
    (folder / ".env").write_text(f"EXPERTBRIDGE_YOLO_WEIGHTS={evil}\nEXPERTBRIDGE_TRUST_PICKLE_WEIGHTS=1\n")
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    network_log = tmp_path / "NETWORK"
    (blocker / "sitecustomize.py").write_text(SITECUSTOMIZE.format(marker=str(network_log)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPERTBRIDGE_") and "OFFLINE" not in k}
    env.update(PYTHONPATH=f"{blocker}{os.pathsep}{REPO}", HOME=str(tmp_path / "home"), YOLO_OFFLINE="1")
    env.pop("XDG_CONFIG_HOME", None)
    proc = subprocess.run(
        [sys.executable, "-m", "workflows.cli", "run", "yolo", image],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = " ".join((proc.stdout + proc.stderr).split())
    assert not marker.exists(), f"the payload ran: {output}"
    assert not network_log.exists(), f"the network was touched: {network_log.read_text()}"
    assert proc.returncode == 2, output
    assert "refusing to load 'yolov8n.pt'" in output and "EXPERTBRIDGE_TRUST_PICKLE_WEIGHTS=1" in output
    assert "Traceback" not in output
