"""The `expertbridge` command line: per-item results, JSONL output, drawn boxes, clear errors, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from workflows.cli import app

runner = CliRunner()


def test_experts_lists_the_registry():
    result = runner.invoke(app, ["experts"])
    assert result.exit_code == 0
    for name in ("yolo", "clip", "dinov2", "timm", "captioner", "dense_captioner"):
        assert name in result.output


def test_run_writes_jsonl_and_drawings_and_reports_bad_items(tmp_path, bus_jpg, yolo_weights):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(bus_jpg, photos / "bus.jpg")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    out = tmp_path / "out" / "dets.jsonl"
    result = runner.invoke(
        app,
        [
            "run",
            "yolo",
            str(photos),
            str(tmp_path / "missing.png"),
            "--weights",
            str(yolo_weights),
            "--out",
            str(out),
            "--draw",
            str(tmp_path / "drawn"),
            "--set",
            "conf=0.5",
            "--device",
            "cpu",
        ],
        env={"EXPERTBRIDGE_OFFLINE": "1"},
    )
    assert result.exit_code == 1, result.output  # some items failed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["source"].rsplit("/", 1)[-1] for r in rows] == ["broken.jpg", "bus.jpg", "missing.png"]
    assert rows[0]["reason"] == "truncated" or rows[0]["reason"] == "not_an_image"
    assert rows[2]["reason"] == "missing"
    labels = [d["label"] for d in rows[1]["evidence"]["items"]]
    assert labels.count("person") == 3 and "bus" in labels  # conf=0.5 drops the weak edge person
    assert Image.open(tmp_path / "drawn" / "bus_yolo.png").size == (810, 1080)
    assert "1 ok, 2 failed" in result.output


def test_missing_weights_exit_with_a_clear_message(tmp_path, bus_jpg):
    result = runner.invoke(app, ["run", "yolo", str(bus_jpg), "--weights", str(tmp_path / "nope.tflite")])
    assert result.exit_code == 2
    assert "weights file not found" in result.output and "nope.tflite" in result.output


def test_bad_option_syntax():
    result = runner.invoke(app, ["run", "yolo", "x.jpg", "--set", "conf"])
    assert result.exit_code != 0 and "key=value" in result.output


@pytest.mark.slow  # real weights over all 398 images
def test_fewshot_eval_fit_predict_end_to_end(tmp_path, hymenoptera, monkeypatch):
    """eval writes the report; fit saves a model; predict labels images and reports a broken one."""
    monkeypatch.setenv("EXPERTBRIDGE_STORE_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("EXPERTBRIDGE_OFFLINE", "1")
    report = tmp_path / "report"
    res = runner.invoke(
        app,
        ["fewshot", "eval", str(hymenoptera), "--shots", "1,4", "--seeds", "1", "--methods", "cache,gda"]
        + ["--augment-views", "1", "--report", str(report)],
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in report.iterdir()) == [
        "accuracy_vs_shots.png",
        "confusion_cache.png",
        "confusion_gda.png",
        "report.html",
        "results.json",
    ]
    results = json.loads((report / "results.json").read_text())
    assert {(r["method"], r["shots"]) for r in results["rows"]} == {
        (m, k) for m in ("cache", "gda", "centroid", "logreg") for k in (1, 4)
    }
    assert all(0.5 < r["accuracy"] <= 1.0 for r in results["rows"])
    html = (report / "report.html").read_text()
    assert "accuracy_vs_shots.png" in html and "centroid" in html and "logreg" in html

    model = tmp_path / "model"
    res = runner.invoke(
        app, ["fewshot", "fit", str(hymenoptera), "--shots", "4", "--augment-views", "1"] + ["--out", str(model)]
    )
    assert res.exit_code == 0, res.output
    assert "test accuracy" in res.output and (model / "model.safetensors").is_file()

    photos = tmp_path / "photos"
    photos.mkdir()
    ant = sorted((hymenoptera / "val" / "ants").iterdir())[0]
    (photos / "ant.jpg").write_bytes(ant.read_bytes())
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    preds_file = tmp_path / "preds.jsonl"
    res = runner.invoke(app, ["fewshot", "predict", str(model), str(photos), "--out", str(preds_file)])
    assert res.exit_code == 1, res.output  # the broken image failed
    assert "1 ok, 1 failed" in res.output
    preds = {Path(p["source"]).name: p for p in map(json.loads, preds_file.read_text().splitlines())}
    assert preds["ant.jpg"]["label"] == "ants"
    assert preds["broken.jpg"]["label"] is None and "broken.jpg" in preds["broken.jpg"]["error"]


# --------------------------------------------------------------------------- the CLI root


HEAVY = ("torch", "torchvision", "transformers", "ultralytics", "langchain", "langchain_core", "timm", "open_clip")


def test_the_cli_and_its_help_import_no_heavy_library():
    """`expertbridge --help` must stay fast: no torch & co. at import time or while rendering help."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from workflows.cli import app\n"
        "for args in (['--help'], ['run', '--help'], ['fewshot', 'eval', '--help'], ['batch', '--help']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0, args\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_a_directory_without_images_is_an_error_not_an_empty_run(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    result = runner.invoke(app, ["run", "timm", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert f"no images found in {tmp_path / 'empty'}" in result.output and "0 ok" not in result.output


def test_set_options_are_checked_against_the_expert(bus_jpg, yolo_weights):
    result = runner.invoke(app, ["run", "yolo", str(bus_jpg), "--weights", str(yolo_weights), "--set", "conf=abc"])
    assert result.exit_code == 2
    assert "--set conf=abc" in result.output and "valid number" in result.output
    assert "Traceback" not in result.output and "TypeError" not in result.output
    result = runner.invoke(app, ["run", "yolo", str(bus_jpg), "--weights", str(yolo_weights), "--set", "nosuch=1"])
    assert result.exit_code == 2
    assert "yolo has no option 'nosuch'" in result.output and "conf, device" in result.output


def test_unknown_expert_options_are_a_config_error_in_python_too():
    from experts import ConfigError, create_expert

    with pytest.raises(ConfigError, match=r"expert 'timm' has no option 'nosuch'; its options: .*batch_size"):
        create_expert("timm", weights=None, nosuch=1)


def test_fewshot_eval_names_a_missing_dataset(tmp_path):
    result = runner.invoke(app, ["fewshot", "eval", str(tmp_path / "nonexistent")])
    assert result.exit_code == 2
    assert f"dataset {tmp_path / 'nonexistent'} does not exist" in result.output


def test_fewshot_help_lists_the_real_methods_and_demo_views():
    from workflows.commands.fewshot import METHOD_NAMES, SWEEP_VIEWS
    from workflows.fewshot import METHODS
    from workflows.fewshot_eval import SWEEP_VIEWS as sweep_views

    assert METHOD_NAMES == METHODS
    assert SWEEP_VIEWS == sweep_views


def test_an_invalid_setting_is_one_line_naming_the_variable(bus_jpg):
    result = runner.invoke(app, ["run", "yolo", str(bus_jpg)], env={"EXPERTBRIDGE_BATCH_SIZE": "0"})
    assert result.exit_code == 2
    assert "invalid setting: EXPERTBRIDGE_BATCH_SIZE='0'" in result.output and "Traceback" not in result.output


def test_offline_yolo_tag_names_the_setting_and_the_flag(bus_jpg):
    result = runner.invoke(
        app, ["run", "yolo", str(bus_jpg), "--weights", "yolov8n.pt"], env={"EXPERTBRIDGE_OFFLINE": "1"}
    )
    assert result.exit_code == 2
    assert "EXPERTBRIDGE_YOLO_WEIGHTS=PATH" in result.output and "--weights PATH" in result.output
    assert "pass weights=PATH" not in result.output


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ConnectionError("Failed to connect to Ollama."), "start Ollama"),
        (TimeoutError("timed out"), "check that it is running"),
    ],
)
def test_connection_failures_are_one_line_with_what_to_try(error, expected):
    from workflows.commands.root import describe_failure

    line = describe_failure(error)
    assert line is not None and expected in line and type(error).__name__ in line
    assert describe_failure(KeyError("a bug")) is None  # bugs keep their traceback


def test_library_connection_errors_are_recognised_through_their_cause():
    import httpx
    import openai

    from workflows.commands.root import describe_failure

    wrapped = RuntimeError("graph step failed")
    wrapped.__cause__ = httpx.ConnectError("[Errno 111] Connection refused")
    assert "ConnectError: [Errno 111] Connection refused" in describe_failure(wrapped)
    line = describe_failure(openai.OpenAIError("Missing credentials. Please pass an `api_key`"))
    assert "OPENAI_API_KEY" in line


def test_logging_is_plain_lines_when_not_a_terminal(capsys):
    import logging

    from workflows.commands.root import configure_logging

    configure_logging(quiet=True)
    assert logging.getLogger("workflows").level == logging.WARNING
    configure_logging(verbose=True)
    assert logging.getLogger("experts").level == logging.DEBUG
    handlers = [h for h in logging.getLogger().handlers if h.get_name() == "expertbridge-cli"]
    assert len(handlers) == 1 and handlers[0].formatter._fmt == "%(levelname)s %(name)s: %(message)s"  # not a TTY
    configure_logging()
    assert logging.getLogger("workflows").level == logging.INFO


def test_missing_weights_messages_name_the_setting_not_a_python_argument():
    from experts import WeightsNotFoundError, create_expert

    with pytest.raises(WeightsNotFoundError, match="EXPERTBRIDGE_CLIP_WEIGHTS=PATH"):
        create_expert("clip", weights="openai", offline=True)  # what `fewshot fit --clip` builds
    with pytest.raises(WeightsNotFoundError, match="EXPERTBRIDGE_DINOV2_WEIGHTS=PATH"):
        create_expert("dinov2", weights="pretrained", repo="/nonexistent/dinov2", offline=True).load()


def test_the_package_declares_its_license_as_an_spdx_string():
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"  # a table here makes setuptools print a deprecation 3x
    assert "setuptools>=77" in project["build-system"]["requires"]


@pytest.mark.slow
def test_batch_submit_prints_only_the_job_id_on_stdout(tmp_path, bus_jpg, yolo_weights):
    """Scripts do `JOB=$(expertbridge batch submit …)`: no library chatter may reach stdout."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("EXPERTBRIDGE_", "YOLO_VERBOSE"))},
        "EXPERTBRIDGE_OFFLINE": "1",
        "EXPERTBRIDGE_DEVICE": "cpu",
        "EXPERTBRIDGE_YOLO_WEIGHTS": str(yolo_weights),
        "EXPERTBRIDGE_JOBS_DIR": str(tmp_path / "jobs"),
        "EXPERTBRIDGE_STORE_DIR": str(tmp_path / "store"),
    }
    repo = Path(__file__).resolve().parents[1]
    argv = [sys.executable, "-m", "workflows.cli", "batch", "submit", str(bus_jpg), "--experts", "yolo"]
    done = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert len(job_id.splitlines()) == 1 and (tmp_path / "jobs" / job_id).exists(), done.stdout


# --------------------------------------------------------------------------- logging and errors, in one place


@pytest.fixture
def noisy_experts_command(monkeypatch):
    """`expertbridge experts`, made to log a DEBUG, an INFO and a WARNING line of our packages first."""
    import logging

    import experts
    from workflows.commands.root import configure_logging

    real = experts.list_experts

    def noisy():
        log = logging.getLogger("experts.cli_test")
        log.debug("a debug line")
        log.info("an info line")
        log.warning("a warning line")
        return real()

    monkeypatch.setattr(experts, "list_experts", noisy)
    yield
    configure_logging()  # the default levels for the tests after this one


@pytest.mark.parametrize(
    ("flags", "shown", "hidden"),
    [
        ([], ["INFO experts.cli_test: an info line", "WARNING experts.cli_test: a warning line"], ["a debug line"]),
        (["--quiet"], ["WARNING experts.cli_test: a warning line"], ["an info line", "a debug line"]),
        (["-q"], ["a warning line"], ["an info line", "a debug line"]),
        (["--verbose"], ["DEBUG experts.cli_test: a debug line", "an info line", "a warning line"], []),
        (["-v"], ["a debug line"], []),
    ],
)
def test_quiet_and_verbose_choose_what_our_packages_log(noisy_experts_command, flags, shown, hidden):
    result = runner.invoke(app, [*flags, "experts"])
    assert result.exit_code == 0, result.output
    assert "yolo" in result.output  # the command itself still ran
    for line in shown:
        assert line in result.output
    for line in hidden:
        assert line not in result.output


def test_logging_uses_rich_on_a_terminal(monkeypatch):
    import io
    import logging

    from rich.logging import RichHandler

    from workflows.commands.root import configure_logging

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    configure_logging()
    handlers = [h for h in logging.getLogger().handlers if h.get_name() == "expertbridge-cli"]
    assert len(handlers) == 1 and isinstance(handlers[0], RichHandler)
    monkeypatch.undo()
    configure_logging()
    assert not isinstance(
        next(h for h in logging.getLogger().handlers if h.get_name() == "expertbridge-cli"), RichHandler
    )


def _every_command() -> dict[tuple[str, ...], object]:
    """Every leaf command of the CLI (path → its typer CommandInfo), sub-groups included."""
    found: dict[tuple[str, ...], object] = {}

    def walk(typer_app, prefix: tuple[str, ...]) -> None:
        for info in typer_app.registered_commands:
            found[(*prefix, info.name)] = info
        for group in typer_app.registered_groups:
            walk(group.typer_instance, (*prefix, group.name))

    walk(app, ())
    return found


COMMANDS = _every_command()


def test_the_command_walk_finds_every_command():
    assert {("run",), ("experts",), ("presets",), ("ask",), ("worker",)} <= set(COMMANDS)
    assert {("fewshot", "fit"), ("batch", "status"), ("bridge", "train")} <= set(COMMANDS)


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_a_config_error_from_any_command_is_one_line_and_exit_2(path, monkeypatch):
    """The mapping lives in the CLI root (workflows/commands/root.py), not in each command."""
    from experts import ConfigError

    def fails() -> None:
        raise ConfigError(f"{' '.join(path)}: no such thing")

    monkeypatch.setattr(COMMANDS[path], "callback", fails)
    result = runner.invoke(app, list(path))
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [f"error: {' '.join(path)}: no such thing"]
    assert isinstance(result.exception, SystemExit)  # no exception escaped, no traceback printed


def test_a_bug_in_a_command_keeps_its_traceback(monkeypatch):
    def fails() -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(COMMANDS[("experts",)], "callback", fails)
    result = runner.invoke(app, ["experts"])
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)


def test_a_config_error_while_building_the_settings_is_one_line_for_every_command(tmp_path):
    for path in (["experts"], ["batch", "list"], ["fewshot", "predict", "m", "x.jpg"]):
        result = runner.invoke(app, path, env={"EXPERTBRIDGE_ENV_FILE": str(tmp_path / "missing.env")})
        assert result.exit_code == 2, result.output
        assert result.output.splitlines() == [f"error: EXPERTBRIDGE_ENV_FILE={tmp_path / 'missing.env'}: no such file"]


@pytest.mark.parametrize(
    "args",
    [["experts"], ["batch", "list"], ["bridge", "caption", "no-such-bridge", "x.jpg"], ["fewshot", "eval", "nowhere"]],
    ids=" ".join,
)
def test_the_root_builds_the_settings_once_for_every_command(args, monkeypatch):
    from workflows.settings import Settings

    built = []
    init = Settings.__init__

    def counting_init(self, *a, **kw):
        built.append(self)
        init(self, *a, **kw)

    monkeypatch.setattr(Settings, "__init__", counting_init)
    result = runner.invoke(app, args)
    assert result.exit_code in (0, 2), result.output
    assert len(built) == 1, f"{' '.join(args)} built Settings {len(built)} times"
