"""StoredExpert: an expert answered from the feature store, run on the misses only, each file read once.

Quick: the colour-histogram expert (no weights) and a fake detector stand in for real models.
"""

from __future__ import annotations

import ast
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agents.tools import ExpertToolbox, call_tool
from cache.store import DirectoryStore
from experts import Detection, Detections, Expert, create_expert
from experts.file_hashes import FileHashes
from workflows.datasets import LabelledImages
from workflows.fewshot import FewShotClassifier
from workflows.store_runner import StoredExpert

REPO = Path(__file__).resolve().parents[1]
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]


def _images(folder: Path, n: int = len(COLOURS)) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, colour in enumerate(COLOURS[:n]):
        image = Image.new("RGB", (40 + 4 * i, 32), (250, 250, 250))
        image.paste(colour, (8, 8, 30, 24))
        path = folder / f"img{i}.png"
        image.save(path)
        paths.append(str(path))
    return paths


def _counting(expert: Expert) -> list[int]:
    """Wrap ``expert.predict``: the returned list holds each forward batch's size."""
    calls: list[int] = []
    predict = expert.predict

    def counted(images):
        calls.append(len(images))
        return predict(images)

    expert.predict = counted  # type: ignore[method-assign]
    return calls


@pytest.fixture
def reads(monkeypatch):
    """Counts ``os.open`` of each file (every image read goes through experts.sources.read_file)."""
    opened: Counter[str] = Counter()
    real_open = os.open

    def counting_open(path, flags, *args, **kwargs):
        opened[os.fsdecode(path)] += 1
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    return opened


def test_stored_evidence_is_the_wrapped_experts_and_a_warm_run_makes_no_forward_pass(tmp_path):
    paths = _images(tmp_path / "img")
    expert = create_expert("color_histogram", device="cpu", batch_size=4)
    direct = expert.run(paths)
    calls = _counting(expert)
    stored = StoredExpert(expert, DirectoryStore(tmp_path / "store"))
    assert stored.last_run is None
    for run, counts in ((1, (0, 6, 0)), (2, (6, 0, 0))):
        results = stored.run(paths)
        last = stored.last_run
        assert (last.hits, last.misses, last.failed) == counts, run
        assert [(r.index, r.source, r.sha256, r.ok) for r in results] == [
            (d.index, d.source, d.sha256, True) for d in direct
        ]
        for got, want in zip(results, direct):
            assert np.array_equal(got.evidence.vector, want.evidence.vector)
            assert got.evidence.normalized == want.evidence.normalized
    assert calls == [4, 2]  # the cold run only: two batches of at most batch_size
    # it is the wrapped expert to everything else
    assert stored.name == "color_histogram" and stored.identity == expert.identity
    assert stored.bins == expert.bins and stored.batch_size == 4 and isinstance(stored, Expert)


def test_only_misses_reach_the_model_in_full_batches(tmp_path):
    paths = _images(tmp_path / "img")
    store = DirectoryStore(tmp_path / "store")
    expert = create_expert("color_histogram", device="cpu", batch_size=2)
    StoredExpert(expert, store).run(paths[::2])  # images 0, 2, 4 stored
    calls = _counting(expert)
    done: list[int] = []
    results, run = StoredExpert(expert, store).run_counted(paths, on_done=done.append)
    assert (run.hits, run.misses) == (3, 3)
    assert calls == [2, 1]  # misses 1, 3, 5 gathered across windows into full batches
    assert sum(done) == len(paths)
    want = expert.run(paths)
    assert all(np.array_equal(r.evidence.vector, w.evidence.vector) for r, w in zip(results, want))
    assert [r.index for r in results] == list(range(len(paths)))


def test_a_corrupt_image_fails_alone_and_is_not_stored(tmp_path):
    good = _images(tmp_path / "img", 3)
    corrupt = tmp_path / "img" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    missing = str(tmp_path / "img" / "missing.png")
    sources = [good[0], str(corrupt), good[1], missing, good[2]]
    expert = create_expert("color_histogram", device="cpu", batch_size=2)
    stored = StoredExpert(expert, DirectoryStore(tmp_path / "store"))
    for counts in ((0, 4, 1), (3, 1, 1)):  # the corrupt file is a miss again: nothing was stored for it
        results = stored.run(sources)
        assert [r.ok for r in results] == [True, False, True, False, True]
        assert results[1].reason == "truncated" and str(corrupt) in results[1].error
        assert results[1].sha256 is not None  # it was hashed; decoding failed
        assert results[3].reason == "missing"
        last = stored.last_run
        assert (last.hits, last.misses, last.failed) == (counts[0], counts[1], 2)


def test_a_cold_run_reads_each_file_once_to_hash_and_decode(tmp_path, reads):
    paths = _images(tmp_path / "img")
    stored = StoredExpert(create_expert("color_histogram", device="cpu"), DirectoryStore(tmp_path / "store"))
    reads.clear()
    assert all(r.ok for r in stored.run(paths))
    assert {p: reads[p] for p in paths} == dict.fromkeys(paths, 1)
    reads.clear()
    assert all(r.ok for r in stored.run(paths))  # warm: a hash each, no decode
    assert {p: reads[p] for p in paths} == dict.fromkeys(paths, 1)


def test_file_hashes_notice_a_rewritten_file(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(path)
    hashes = FileHashes()
    first = hashes.hash(str(path))
    assert hashes.hash(str(path)).sha256 == first.sha256 and len(hashes) == 1
    Image.new("RGB", (9, 8), (1, 2, 3)).save(path)  # a new size
    second = hashes.hash(str(path))
    assert second.sha256 != first.sha256
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, new mtime
    os.utime(path, ns=(1, 1))
    assert hashes.hash(str(path)).sha256 not in (first.sha256, second.sha256)


def test_a_warm_few_shot_fit_reads_each_support_file_once(tmp_path, reads):
    """Every branch and augmented view of a fit asks for each support image; the file is read once."""
    support_paths = _images(tmp_path / "support")
    support = LabelledImages(support_paths, [0, 0, 0, 1, 1, 1], ("a", "b"))
    store = DirectoryStore(tmp_path / "store")

    def classifier():
        experts = [create_expert("color_histogram", device="cpu", bins=b) for b in (4, 2)]
        return FewShotClassifier(experts, store=store, augment_views=3, method="cache")

    cold = classifier().fit(support)
    reads.clear()
    warm = classifier().fit(support)
    assert {p: reads[p] for p in support_paths} == dict.fromkeys(support_paths, 1)
    probe = support_paths[:2]
    assert [p.probabilities for p in warm.predict(probe)] == [p.probabilities for p in cold.predict(probe)]


class FakeDetector(Expert):
    name = "fake_detector"
    evidence_type = Detections
    names = {0: "person", 1: "bus"}

    def __init__(self) -> None:
        super().__init__(weights=None, device="cpu")

    def _load(self):
        return "fake"

    def predict(self, images):
        return [Detections(im.size, (Detection((1.0, 2.0, 5.0, 6.0), "person", 0.9, 0),)) for im in images]


def test_the_toolbox_reports_the_store_counts_of_a_stored_expert(tmp_path):
    image = _images(tmp_path / "img", 1)[0]
    (plain,) = ExpertToolbox(detector=FakeDetector()).tools
    (stored,) = ExpertToolbox(detector=StoredExpert(FakeDetector(), DirectoryStore(tmp_path / "store"))).tools
    want = call_tool(plain, image)
    assert want.artifact["store"] == {"hits": 0, "misses": 1}
    for counts in ({"hits": 0, "misses": 1, "failed": 0}, {"hits": 1, "misses": 0, "failed": 0}):
        got = call_tool(stored, image)
        assert got.content == want.content and got.artifact["evidence"] == want.artifact["evidence"]
        assert got.artifact["store"] == counts
    # the detector's own attributes reach the tool through the wrapper: an unknown class is named
    text = call_tool(stored, image, {"labels": ["dog"]}).content
    assert "no class dog" in text


def test_agents_never_import_workflows():
    """The toolbox takes experts; the store-backed ones are built by workflows, never reached from agents."""
    for path in (REPO / "agents").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(n == "workflows" or n.startswith("workflows.") for n in names), path


def test_a_warm_question_reads_its_image_once(tmp_path, reads):
    """Through ask: the image check hashes the file, the tool finds the hash remembered and the store warm."""
    from agents.chat import ScriptedChatModel
    from workflows.reasoning import Reasoner

    image = _images(tmp_path / "img", 1)[0]
    store = DirectoryStore(tmp_path / "store")
    detector = FakeDetector()
    calls = _counting(detector)
    traces, read = [], []
    for _ in range(2):
        reasoner = Reasoner(model=ScriptedChatModel(), experts={"yolo": detector}, store=store, rules=True)
        reads.clear()
        traces.append(reasoner.ask(image, "How many people are there?").trace)
        read.append(reads[image])
    assert read == [2, 1]  # cold: the check, then the detector's decode; warm: the check alone
    (cold,), (warm,) = traces[0].tool_steps, traces[1].tool_steps
    assert (cold.store_hits, cold.store_misses, warm.store_hits, warm.store_misses) == (0, 1, 1, 0)
    assert calls == [1] and traces[1].answer == traces[0].answer == "1"
