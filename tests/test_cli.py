"""The `expertbridge` command line: per-item results, JSONL output, drawn boxes, clear errors."""

from __future__ import annotations

import json
import shutil
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
    assert result.exit_code == 0, result.output
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
    assert res.exit_code == 0, res.output
    preds = {Path(p["source"]).name: p for p in map(json.loads, preds_file.read_text().splitlines())}
    assert preds["ant.jpg"]["label"] == "ants"
    assert preds["broken.jpg"]["label"] is None and "broken.jpg" in preds["broken.jpg"]["error"]
