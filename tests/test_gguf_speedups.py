"""The GGUF load speed-up: memoized for the loading thread only, and undone after the last load ends."""

from __future__ import annotations

import threading

import pytest

from agents.chat.gguf_speedups import gguf_load_speedups

gguf = pytest.importorskip("gguf")


class CountingReader:
    """Stands in for gguf.GGUFReader: counts parses."""

    opened: list[str] = []

    def __init__(self, path, mode="r"):
        self.path = path
        CountingReader.opened.append(path)


@pytest.fixture()
def fake_gguf(monkeypatch):
    CountingReader.opened = []
    calls = []
    monkeypatch.setattr(gguf, "GGUFReader", CountingReader)
    monkeypatch.setattr(gguf, "get_tensor_name_map", lambda arch, n: calls.append((arch, n)) or {"arch": arch})
    return calls


def test_one_parse_per_file_inside_the_block_and_the_originals_after(fake_gguf, tmp_path):
    path = tmp_path / "m.gguf"
    with gguf_load_speedups():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first and gguf.GGUFReader(path, "r") is first
        gguf.get_tensor_name_map(1, 30), gguf.get_tensor_name_map(1, 30), gguf.get_tensor_name_map(2, 30)
    assert len(CountingReader.opened) == 1 and fake_gguf == [(1, 30), (2, 30)]
    assert gguf.GGUFReader is CountingReader
    with gguf_load_speedups():  # a new load parses again: nothing outlives its block
        assert gguf.GGUFReader(path) is not first


def test_another_thread_sees_the_original_behaviour_while_a_load_runs(fake_gguf, tmp_path):
    path = tmp_path / "m.gguf"
    inside, outside = threading.Event(), threading.Event()
    seen = []

    def other_thread():
        inside.wait(10)
        seen.append((gguf.GGUFReader(path), gguf.GGUFReader(path)))  # not in a load: two parses
        gguf.get_tensor_name_map(1, 2), gguf.get_tensor_name_map(1, 2)
        outside.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    with gguf_load_speedups():
        mine = gguf.GGUFReader(path)
        inside.set()
        assert outside.wait(10)
        assert gguf.GGUFReader(path) is mine
    worker.join(10)
    a, b = seen[0]
    assert a is not b and mine not in (a, b) and fake_gguf.count((1, 2)) == 2


def test_overlapping_loads_in_two_threads_restore_the_originals_once_both_end(fake_gguf):
    first_in, second_done = threading.Event(), threading.Event()

    def second():
        first_in.wait(10)
        with gguf_load_speedups():
            pass
        second_done.set()

    worker = threading.Thread(target=second)
    worker.start()
    with gguf_load_speedups():
        first_in.set()
        assert second_done.wait(10)
        assert gguf.GGUFReader is not CountingReader  # still installed: the first load has not ended
    worker.join(10)
    assert gguf.GGUFReader is CountingReader


def test_a_name_replaced_during_a_load_is_left_as_replaced(fake_gguf, monkeypatch):
    class Other(CountingReader):
        pass

    with gguf_load_speedups():
        monkeypatch.setattr(gguf, "GGUFReader", Other)
    assert gguf.GGUFReader is Other
