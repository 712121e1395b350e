"""User-derived text is rendered literally and never crashes a command after its work is done:
Rich markup in paths and class names, matplotlib mathtext (``$``) in class names, HTML in reports,
and file names that are not valid UTF-8."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from experts.sources import local_path
from workflows.cli import app
from workflows.fewshot_eval import SweepResult
from workflows.rendering import markup, plain
from workflows.report import write_fewshot_report

runner = CliRunner()

MARKUP = "a[/x]b[red]"  # Rich would read a closing tag that matches nothing: MarkupError
MATHTEXT = r"$\badcmd$"  # matplotlib would parse it as math: ValueError "Unknown symbol"


def test_plain_and_markup_show_user_text_literally():
    assert plain("bus.jpg") == "bus.jpg"
    undecodable = os.fsdecode(b"bad\xffname.jpg")  # what os.listdir returns for a non-UTF-8 name
    assert plain(undecodable) == "bad\\xffname.jpg"
    assert plain("lone \ud800") == "lone \\ud800"
    from rich.text import Text

    assert Text.from_markup(markup(MARKUP)).plain == MARKUP
    assert Text.from_markup(markup(undecodable + "[/x]")).plain == "bad\\xffname.jpg[/x]"


def _sweep(classnames: list[str]) -> SweepResult:
    rows = [
        {"method": m, "shots": k, "seed": 0, "accuracy": acc, "val_accuracy": acc, "alpha": 1.0, "beta": 2.0}
        for m, acc in (("cache", 0.75), ("centroid", 0.5))
        for k in (1, 2)
    ]
    confusion = {"confusion": [[2, 0], [1, 1]], "classnames": classnames, "shots": 2, "seed": 0, "accuracy": 0.75}
    return SweepResult(rows=rows, confusions={"cache": confusion})


def test_fewshot_report_with_mathtext_and_html_in_names_is_written(tmp_path):
    classnames = [MATHTEXT, "<b>bees</b> & $x$"]
    page = write_fewshot_report(
        _sweep(classnames), tmp_path / "report", dataset="<script>alert(1)</script>$\\badcmd$", experts=[MATHTEXT]
    )
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == [
        "accuracy_vs_shots.png",
        "confusion_cache.png",
        "report.html",
        "results.json",
    ]
    html = page.read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert results["confusions"]["cache"]["classnames"] == classnames


def test_run_renders_markup_and_undecodable_file_names_literally(tmp_path, bus_jpg, yolo_weights):
    photos = tmp_path / "a["  # with its file, the path holds "[/x]": Rich would read a closing tag
    photos.mkdir()
    shutil.copy(bus_jpg, photos / "x]bus.jpg")
    broken = os.path.join(os.fsencode(photos), b"x]broken\xff.jpg")  # not valid UTF-8
    with open(broken, "wb") as fh:
        fh.write(b"\xff\xd8 not a jpeg")
    out = tmp_path / "dets.jsonl"
    result = runner.invoke(
        app,
        ["run", "yolo", str(photos), "--weights", str(yolo_weights), "--device", "cpu", "--out", str(out)],
        env={"EXPERTBRIDGE_OFFLINE": "1", "COLUMNS": "400"},
    )
    assert result.exit_code == 1, result.output  # one item failed
    assert "a[/x]bus.jpg" in result.output  # shown as written, not parsed
    assert "a%5B/x%5Dbroken%FF.jpg" in result.output  # the undecodable name travels as its file:// URI
    assert "1 ok, 1 failed" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [os.fsencode(local_path(r["source"])) for r in rows] == [broken, os.fsencode(photos / "x]bus.jpg")]
    assert rows[0]["reason"] in ("truncated", "not_an_image") and rows[1]["evidence"]["items"]


@pytest.fixture
def odd_dataset(tmp_path, hymenoptera) -> Path:
    """Two classes named like markup and like mathtext, 3 images per class in train, val and test."""
    root = tmp_path / "odd"
    for split in ("train", "val", "test"):
        for source, name in (("ants", MATHTEXT), ("bees", "[bold]bees")):
            folder = root / split / name
            folder.mkdir(parents=True)
            first = {"train": 0, "val": 3, "test": 6}[split]
            for p in sorted((hymenoptera / "train" / source).glob("*.jpg"))[first : first + 3]:
                shutil.copy(p, folder / p.name)
    return root


def test_fewshot_eval_and_predict_with_odd_class_names(tmp_path, odd_dataset, monkeypatch):
    monkeypatch.setenv("EXPERTBRIDGE_STORE_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("EXPERTBRIDGE_OFFLINE", "1")
    monkeypatch.setenv("COLUMNS", "300")
    report = tmp_path / "report"
    res = runner.invoke(
        app,
        ["fewshot", "eval", str(odd_dataset), "--shots", "2", "--seeds", "1", "--methods", "cache"]
        + ["--augment-views", "1", "--report", str(report)],
    )
    assert res.exit_code == 0, res.output
    assert (report / "confusion_cache.png").is_file() and (report / "report.html").is_file()
    confusion = json.loads((report / "results.json").read_text())["confusions"]["cache"]
    assert confusion["classnames"] == [MATHTEXT, "[bold]bees"]

    model = tmp_path / "model"
    res = runner.invoke(
        app, ["fewshot", "fit", str(odd_dataset), "--shots", "2", "--augment-views", "1", "--out", str(model)]
    )
    assert res.exit_code == 0, res.output
    queries = tmp_path / "queries"  # neutral names: only the label column shows class names
    queries.mkdir()
    for n, p in enumerate(sorted((odd_dataset / "test").rglob("*.jpg"))):
        shutil.copy(p, queries / f"q{n}.jpg")
    preds = tmp_path / "preds.jsonl"
    res = runner.invoke(app, ["fewshot", "predict", str(model), str(queries), "--out", str(preds)])
    assert res.exit_code == 0, res.output
    labels = {json.loads(line)["label"] for line in preds.read_text().splitlines()}
    assert labels and labels <= {MATHTEXT, "[bold]bees"}
    for label in labels:
        assert label in res.output  # each class name, shown literally in the table


def test_html_trace_escapes_every_field_of_a_trace_read_back_from_json():
    from agents.trace import Trace
    from agents.trace_html import trace_to_html

    evil = "<img src=x onerror=alert(1)>"
    data = {
        "question": evil,
        "image": evil,
        "model": evil,
        "mode": evil,
        "answer": evil,
        "rationale": evil,
        "evidence_used": [evil],
        "stopped_by": evil,
        "steps": [
            {
                "kind": "model",
                "started": 0,
                "seconds": 0,
                "content": evil,
                "note": evil,
                "tool_calls": [{"name": evil, "args": {evil: evil}}],
            },
            {"kind": "tool", "started": 0, "seconds": 0, "tool": evil, "arguments": {evil: evil}, "output": evil},
            {"kind": evil, "started": 0, "seconds": 0, "content": evil},
        ],
    }
    page = trace_to_html(Trace.from_dict(data))
    assert "<img" not in page and page.count("&lt;img src=x onerror=alert(1)&gt;") >= 12
