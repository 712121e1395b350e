"""docs/ARCHITECTURE.md's arrows table holds for every import in the code (lazy imports included).

Checked by breaking it on purpose: an ``import workflows`` added inside a function of
``cache/keys.py`` fails the first test, and so does a new top-level package missing from the table.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "ARCHITECTURE.md"


def documented_arrows(text: str) -> dict[str, set[str]]:
    """The ``## Arrows`` table: package → the packages of ours it may import.

    >>> documented_arrows("## Arrows\\n| `cache/` | `errors` |\\n| `errors/` | nothing |\\n## Next")
    {'cache': {'errors'}, 'errors': set()}
    """
    section = text.split("## Arrows", 1)[1].split("\n## ", 1)[0]
    arrows = {}
    for line in section.splitlines():
        row = re.match(r"\|\s*`(\w+)/`\s*\|(.*)\|\s*$", line)
        if row:
            arrows[row.group(1)] = set(re.findall(r"`(\w+)`", row.group(2)))
    return arrows


def imports_of(package: Path, ours: set[str]) -> dict[str, set[str]]:
    """Package of ours → the files of ``package`` that import it (absolute imports, at any depth)."""
    found: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in ours and top != package.name:
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def our_packages() -> set[str]:
    """Top-level packages of the project (the ones pyproject's isort section calls first-party)."""
    pyproject = (REPO / "pyproject.toml").read_text()
    listed = re.search(r"known-first-party\s*=\s*\[([^\]]*)\]", pyproject)
    assert listed, "pyproject.toml: [tool.ruff.lint.isort] known-first-party is gone"
    return set(re.findall(r'"(\w+)"', listed.group(1)))


def test_every_import_follows_the_documented_arrows():
    arrows = documented_arrows(DOC.read_text(encoding="utf-8"))
    ours = our_packages()
    wrong = {
        f"{package} → {target}": sorted(files)
        for package in sorted(arrows)
        for target, files in imports_of(REPO / package, ours).items()
        if target not in arrows[package]
    }
    assert not wrong, f"imports that docs/ARCHITECTURE.md's arrows do not allow: {wrong}"


def test_the_table_names_every_package_and_only_real_ones():
    arrows = documented_arrows(DOC.read_text(encoding="utf-8"))
    on_disk = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file() and p.name in our_packages()}
    assert set(arrows) == on_disk == our_packages()
    assert all(targets <= set(arrows) for targets in arrows.values())
