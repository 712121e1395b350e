"""The README stays true: every example is marked (run or skip) for scripts/check_readme.py, the
settings table is the code's, links stay inside the repository, and the quick examples run as written."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from workflows.settings import Settings, settings_table

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _check_readme():
    spec = importlib.util.spec_from_file_location("check_readme", REPO / "scripts" / "check_readme.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_readme_example_says_whether_it_runs():
    blocks = _check_readme().parse_blocks(README)
    assert len(blocks) >= 10
    assert [b.line for b in blocks if b.action is None] == []
    assert all(b.reason for b in blocks if b.action == "skip")  # a skipped example says why


def test_the_readme_lists_every_setting_as_the_code_has_it():
    table = README.split("<!-- settings-table:start -->\n", 1)[1].split("\n<!-- settings-table:end -->", 1)[0]
    assert table == settings_table()
    for name in Settings.model_fields:
        assert f"`EXPERTBRIDGE_{name.upper()}`" in table


def test_the_readme_lists_every_preset_as_the_table_has_it():
    from experts.presets import PRESETS, presets_table

    table = README.split("<!-- presets-table:start -->\n", 1)[1].split("\n<!-- presets-table:end -->", 1)[0]
    assert table == presets_table()
    assert all(f"`{name}`" in table for name in PRESETS)


def test_readme_links_point_inside_the_repository():
    links = [t for t in re.findall(r"\]\(([^)#]+)\)", README) if "://" not in t]
    assert links, "no relative links found"
    for target in links:
        assert (REPO / target).resolve().is_relative_to(REPO) and (REPO / target).exists(), target


@pytest.mark.slow
def test_the_quick_readme_examples_run_as_written(hymenoptera, yolo_weights):
    """The sample-image setup, the 30-second example and the command-line block, offline, in a scratch dir."""
    check = _check_readme()
    blocks = check.parse_blocks(README)
    wanted = (
        "import ultralytics, pathlib, shutil",
        "from experts import create_expert, list_experts",
        "expertbridge experts",
    )
    numbers = [n for n, b in enumerate(blocks, 1) if any(w in b.code for w in wanted)]
    assert len(numbers) == 3 and all(blocks[n - 1].action == "run" for n in numbers)
    shared = hymenoptera.parents[1]
    assert check.main(["--shared", str(shared), "--only", ",".join(map(str, numbers))]) == 0
