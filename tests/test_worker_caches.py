"""A worker's per-process caches (saved classifiers, reasoners) reuse what they hold and stay bounded."""

from __future__ import annotations

import pytest

import workflows.reasoning as reasoning
from workflows.batch import kinds
from workflows.settings import Settings


@pytest.fixture
def fresh_caches():
    kinds._loaded_classifier.cache_clear()
    reasoning._worker_reasoner.cache_clear()
    yield
    kinds._loaded_classifier.cache_clear()
    reasoning._worker_reasoner.cache_clear()


def test_saved_classifier_loads_once_per_save_and_old_saves_age_out(monkeypatch, fresh_caches):
    from workflows.fewshot import FewShotClassifier

    loads = []
    monkeypatch.setattr(
        FewShotClassifier, "load", classmethod(lambda cls, path, settings: loads.append(path) or object())
    )
    settings = Settings()
    first = kinds._loaded_classifier(kinds._SavedClassifier("/m", 1.0, settings))
    # the same save, even with another Settings object: the loaded one, not a reload
    assert kinds._loaded_classifier(kinds._SavedClassifier("/m", 1.0, Settings())) is first
    assert loads == ["/m"]
    for mtime in range(2, 12):  # the model is saved again and again
        kinds._loaded_classifier(kinds._SavedClassifier("/m", float(mtime), settings))
    assert len(loads) == 11
    assert kinds._loaded_classifier.cache_info().currsize <= 4


def test_reasoner_per_configuration_is_reused_and_bounded(monkeypatch, fresh_caches):
    built = []

    class FakeReasoner:
        def __init__(self, settings, **kwargs):
            built.append(kwargs)

        def ask(self, path, question):
            raise AssertionError("no images in this test")

    monkeypatch.setattr(reasoning, "Reasoner", FakeReasoner)
    settings = Settings()
    for _ in range(3):
        assert reasoning.reason_for_batch([], "q", settings, max_steps=3) == []
    assert built == [{"max_steps": 3}]  # one per configuration, reused by every chunk
    for steps in range(4, 10):
        reasoning.reason_for_batch([], "q", settings, max_steps=steps)
    assert len(built) == 7
    assert reasoning._worker_reasoner.cache_info().currsize <= 2
