"""cache.atomic_write: readers see the old file or the new one, never a part; no temp files stay."""

from __future__ import annotations

import os
import stat

import pytest

from cache.atomic_write import TMP_PREFIX, atomic_write


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TMP_PREFIX))


def test_target_holds_old_content_until_the_block_ends(tmp_path):
    target = tmp_path / "entry.json"
    target.write_text("old")
    with atomic_write(target) as fh:
        fh.write("new, first half ")
        fh.flush()  # even flushed, the partial content is only in the temp file
        assert target.read_text() == "old"
        fh.write("second half")
        assert target.read_text() == "old"
    assert target.read_text() == "new, first half second half"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("existed", [True, False])
def test_writer_raising_midway_leaves_target_untouched_and_no_temp_file(tmp_path, existed):
    target = tmp_path / "v.bin"
    if existed:
        target.write_bytes(b"old bytes")
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_write(target, "wb") as fh:
            fh.write(b"partial")
            fh.flush()
            raise RuntimeError("writer died midway")
    assert (target.read_bytes() if existed else target.exists()) == (b"old bytes" if existed else False)
    assert _leftovers(tmp_path) == []


def test_interrupt_is_cleaned_up_too(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as fh:
            fh.write("{")
            raise KeyboardInterrupt
    assert not target.exists() and _leftovers(tmp_path) == []


def test_fsync_only_when_asked_and_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    with atomic_write(tmp_path / "a", "wb") as fh:
        fh.write(b"a")
    assert events == ["replace"]
    events.clear()
    with atomic_write(tmp_path / "b", "wb", fsync=True) as fh:
        fh.write(b"b")
    assert events == ["fsync", "replace"]


def test_text_is_utf8_temp_name_and_permissions(tmp_path):
    with atomic_write(tmp_path / "d.json") as fh:
        fh.write("häagen ☃")
        [name] = _leftovers(tmp_path)  # while writing: one temp file, hidden, with the target's suffix
    assert name.endswith(".json") and not (tmp_path / name).exists()
    assert (tmp_path / "d.json").read_bytes() == "häagen ☃".encode()
    assert stat.S_IMODE((tmp_path / "d.json").stat().st_mode) == 0o600  # mkstemp's, as before


def test_rejects_other_modes(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "a", "a"):
            pass
