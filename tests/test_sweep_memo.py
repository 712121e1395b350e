"""The sweep memo: a re-run of the same sweep fits nothing and gives the same rows; anything that
decides a run's result (its features, its settings, the fitting code) makes that run fit again."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

# the pixel-statistics expert and the generated red/blue dataset of the sweep tests
from test_fewshot_sweep import dataset  # noqa: F401  (a fixture)
from typer.testing import CliRunner

from cache.store import DirectoryStore
from experts import create_expert
from workflows import fewshot_eval, sweep_memo
from workflows.datasets import load_splits
from workflows.fewshot_eval import run_sweep
from workflows.sweep_memo import SweepMemo, code_digest

METHODS = ("auto", "cache", "gda", "linear")


@pytest.fixture()
def fits(monkeypatch):
    """Counts every fit a sweep makes: a method's classifier, and the logistic-regression baseline."""
    counts = {"methods": 0, "logreg": 0}
    fit, logreg = fewshot_eval.FewShotClassifier.fit_features, fewshot_eval.logistic_regression_accuracy

    def counted_fit(self, *args, **kwargs):
        counts["methods"] += 1
        return fit(self, *args, **kwargs)

    def counted_logreg(*args, **kwargs):
        counts["logreg"] += 1
        return logreg(*args, **kwargs)

    monkeypatch.setattr(fewshot_eval.FewShotClassifier, "fit_features", counted_fit)
    monkeypatch.setattr(fewshot_eval, "logistic_regression_accuracy", counted_logreg)
    return counts


def sweep(dataset, tmp_path, memo, **kwargs):  # noqa: F811
    options = {"shots": (1, 2), "seeds": (0, 1), "methods": METHODS, "augment_views": 2} | kwargs
    encoder = create_expert("pixelstats", device="cpu")
    return run_sweep(load_splits(dataset), [encoder], store=DirectoryStore(tmp_path / "store"), memo=memo, **options)


def test_a_second_sweep_fits_nothing_and_gives_the_same_rows(dataset, tmp_path, fits):  # noqa: F811
    first = sweep(dataset, tmp_path, SweepMemo(tmp_path / "memo"))
    assert fits["methods"] > 0 and fits["logreg"] == 4  # 2 shot counts x 2 seeds
    fits.update(methods=0, logreg=0)
    memo = SweepMemo(tmp_path / "memo")
    again = sweep(dataset, tmp_path, memo)
    assert fits == {"methods": 0, "logreg": 0}
    assert again.rows == first.rows and again.confusions == first.confusions
    assert memo.hits == len(first.rows) == 4 * (len(METHODS) + 2) and memo.misses == 0
    assert again.setup["remembered_runs"] == len(first.rows)


def test_new_shot_counts_and_seeds_fit_only_the_new_runs(dataset, tmp_path, fits):  # noqa: F811
    sweep(dataset, tmp_path, SweepMemo(tmp_path / "memo"))
    fits.update(methods=0, logreg=0)
    memo = SweepMemo(tmp_path / "memo")
    sweep(dataset, tmp_path, memo, shots=(1, 2, 4), seeds=(0, 1))
    assert fits["logreg"] == 2  # the two 4-shot runs
    assert memo.hits == 4 * 6 and memo.misses == 2 * 6


def test_other_features_of_the_same_images_are_fitted_again(dataset, tmp_path, fits):  # noqa: F811
    """One more augmented view changes every support matrix: no run may reuse a result of the old ones."""
    sweep(dataset, tmp_path, SweepMemo(tmp_path / "memo"))
    fits.update(methods=0, logreg=0)
    memo = SweepMemo(tmp_path / "memo")
    sweep(dataset, tmp_path, memo, augment_views=3)
    assert memo.hits == 0 and fits["logreg"] == 4


def test_an_edited_image_misses_every_run_that_scores_it(dataset, tmp_path, fits):  # noqa: F811
    """Same file names, same shapes, other pixels: the memo keys on the features' bytes, not on the paths."""
    copy = tmp_path / "data"
    shutil.copytree(dataset, copy)
    sweep(copy, tmp_path, SweepMemo(tmp_path / "memo"))
    Image.fromarray(np.full((24, 24, 3), 200, dtype=np.uint8)).save(copy / "val" / "blue" / "0.png")  # a test image
    fits.update(methods=0, logreg=0)
    memo = SweepMemo(tmp_path / "memo")
    sweep(copy, tmp_path, memo)
    assert memo.hits == 0 and fits["logreg"] == 4


def test_changed_fitting_code_fits_every_run_again(dataset, tmp_path, fits, monkeypatch):  # noqa: F811
    sweep(dataset, tmp_path, SweepMemo(tmp_path / "memo"))
    monkeypatch.setattr(sweep_memo, "code_digest", lambda: "an edited head")
    fits.update(methods=0, logreg=0)
    memo = SweepMemo(tmp_path / "memo")
    sweep(dataset, tmp_path, memo)
    assert memo.hits == 0 and fits["logreg"] == 4


def test_the_code_digest_follows_the_fitting_sources_only(tmp_path):
    digest = code_digest.__wrapped__  # uncached: the files change under it here
    (tmp_path / "cache").mkdir()
    (tmp_path / "experts").mkdir()
    (tmp_path / "cache" / "gda.py").write_text("ALPHAS = (1, 10)\n")
    (tmp_path / "experts" / "yolo.py").write_text("x = 1\n")
    before = digest(tmp_path)
    (tmp_path / "experts" / "yolo.py").write_text("x = 2\n")  # features are hashed themselves, not this code
    assert digest(tmp_path) == before
    (tmp_path / "cache" / "gda.py").write_text("ALPHAS = (1, 100)\n")
    assert digest(tmp_path) != before
    assert code_digest() != before and len(code_digest()) == 64


def test_a_damaged_entry_is_refitted_and_overwritten(dataset, tmp_path, fits):  # noqa: F811
    first = sweep(dataset, tmp_path, SweepMemo(tmp_path / "memo"))
    entries = sorted((tmp_path / "memo").glob("*/*.json"))
    assert len(entries) == len(first.rows)
    entries[0].write_text('{"format": "expertbridge-sweep-run-1", "resu')
    entries[1].write_text(json.dumps({**json.loads(entries[1].read_text()), "run": "another run"}))
    memo = SweepMemo(tmp_path / "memo")
    again = sweep(dataset, tmp_path, memo)
    assert memo.misses == 2 and again.rows == first.rows
    memo = SweepMemo(tmp_path / "memo")
    sweep(dataset, tmp_path, memo)
    assert memo.misses == 0  # both were written back


def test_refit_fits_every_run_and_keeps_the_memo_warm(dataset, tmp_path, fits):  # noqa: F811
    sweep(dataset, tmp_path, SweepMemo(tmp_path / "memo"))
    fits.update(methods=0, logreg=0)
    memo = SweepMemo(tmp_path / "memo", refit=True)
    sweep(dataset, tmp_path, memo)
    assert memo.hits == 0 and fits["logreg"] == 4
    memo = SweepMemo(tmp_path / "memo")
    sweep(dataset, tmp_path, memo)
    assert memo.misses == 0


def test_fewshot_eval_says_how_many_runs_it_remembered(dataset, tmp_path, monkeypatch):  # noqa: F811
    from workflows.cli import app

    monkeypatch.setenv("EXPERTBRIDGE_STORE_DIR", str(tmp_path / "store"))
    args = ["fewshot", "eval", str(dataset), "--experts", "pixelstats", "--shots", "1,2", "--seeds", "1"]
    args += ["--methods", "cache,gda", "--report", str(tmp_path / "report")]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0 and "remembered" not in first.output, first.output
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "8 of 8 runs remembered from an earlier sweep" in again.output, again.output
    table = [line for line in first.output.splitlines() if "%" in line and "runs:" not in line]
    assert table and all(line in again.output for line in table)  # the same accuracies, fitted or remembered
    page = (tmp_path / "report" / "report.html").read_text()
    assert "8 run result(s) were read back from an earlier sweep" in page
    refit = CliRunner().invoke(app, [*args, "--refit"])
    assert refit.exit_code == 0 and "remembered" not in refit.output, refit.output
    assert (tmp_path / "store" / "sweep-runs").is_dir()


def test_what_a_warm_sweep_runs_imports_no_torchvision(dataset):  # noqa: F811
    """Importing torchvision imports torch._dynamo: 1.5 s of a 3 s warm sweep. Catches a module-level
    ``import torchvision`` coming back into the few-shot path, the dataset walk or an expert module."""
    code = (
        "import sys\n"
        "import experts.registry, workflows.commands.fewshot, workflows.fewshot_eval, workflows.report\n"
        "from workflows.datasets import load_splits\n"
        "from workflows.fewshot_features import augmentation\n"
        "experts.registry.list_experts()  # imports every built-in expert module\n"
        f"load_splits({str(dataset)!r}); augmentation(1)\n"
        "print('torchvision' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", done.stderr
