"""``cache.head.FewShotHead``: the few-shot model on arrays alone (no expert, no image, no store).

Synthetic features: each class a direction plus noise, three branches ("a" clear, "b" weaker, "c"
noise only). Each test says what it catches; each was checked by breaking the code it guards.
"""

from __future__ import annotations

import pytest
import torch

import errors
import experts
from cache.adapter import AdaptiveCache
from cache.gda import fit_gda
from cache.head import AUTO_CANDIDATES, METHODS, FewShotHead
from errors import ConfigError, ExpertBridgeError

CLASSES, DIM = 4, 12


def _split(n_per_class: int, seed: int, views: int = 1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(CLASSES).repeat_interleave(n_per_class)
    feats = {}
    for name, signal in (("a", 2.5), ("b", 1.0), ("c", 0.0)):
        x = torch.randn(views, len(labels), DIM, generator=gen)
        x[:, torch.arange(len(labels)), labels] += signal
        feats[name] = x
    return labels, feats


@pytest.fixture(scope="module")
def data():
    labels, support = _split(5, seed=0, views=2)
    val_labels, val = _split(30, seed=1)
    test_labels, test = _split(25, seed=2)
    return (
        labels,
        support,
        val_labels,
        {n: v[0] for n, v in val.items()},
        test_labels,
        {n: v[0] for n, v in test.items()},
    )


def _accuracy(head: FewShotHead, feats, labels) -> float:
    return float((head.logits(feats)[0].argmax(-1) == labels).float().mean())


@pytest.mark.parametrize("method", ["cache", "cache-train", "gda", "linear", "auto"])
def test_each_method_fits_and_predicts_on_arrays_alone(data, method):
    """Catches a head that needs an expert (or a classifier around it) or votes wrongly: on a clear branch
    every method is far above chance (0.25), with its validation search."""
    labels, support, val_labels, val, test_labels, test = data
    one = {"a": support["a"]}
    head = FewShotHead(method, epochs=2).fit(one, labels, {"a": val["a"]}, val_labels, classnames=list("wxyz"))
    logits, parts, _ = head.logits({"a": test["a"]})
    assert logits.shape == (len(test_labels), CLASSES) and parts
    assert _accuracy(head, {"a": test["a"]}, test_labels) > 0.8, method
    assert head.report["method"] == method and "params" in head.report


def test_zero_shot_is_the_given_text_weights_alone(data):
    """Catches a zero-shot head that is not the prior: with the true class directions as text weights it is
    ``100 · f·W`` exactly."""
    labels, support, _, _, test_labels, test = data
    weights = torch.nn.functional.normalize(torch.eye(DIM)[:, :CLASSES], dim=0)  # (D, C)
    head = FewShotHead("zero-shot", prior="text").fit(
        {"a": support["a"]}, labels, classnames=list("wxyz"), text_weights={"a": weights}
    )
    expected = 100 * torch.nn.functional.normalize(test["a"], dim=-1) @ weights
    assert torch.allclose(head.logits({"a": test["a"]})[0], expected)


def test_auto_leaves_out_a_noise_branch_but_never_a_kept_one(data):
    """Catches ``keep`` being ignored (CLIP's branch must stay) and the subset search not running."""
    labels, support, val_labels, val, test_labels, test = data
    free = FewShotHead("auto").fit(support, labels, val, val_labels, classnames=list("wxyz"))
    assert "c" not in free.branches and set(free.report["experts"]["val_accuracy"]) >= {"a+b+c", "a"}
    kept = FewShotHead("auto", keep=("c",)).fit(support, labels, val, val_labels, classnames=list("wxyz"))
    assert "c" in kept.branches and "c" not in kept.report["experts"]["chosen"]
    assert kept.active in AUTO_CANDIDATES
    assert _accuracy(free, test, test_labels) > 0.8


def test_state_round_trip_predicts_bit_for_bit(data):
    """Catches a saved head losing a part (trained keys, GDA α, the linear head, the chosen head)."""
    labels, support, val_labels, val, _, test = data
    for method in ("cache-train", "gda", "linear", "auto"):
        head = FewShotHead(method, epochs=2, select_branches=False).fit(
            support, labels, val, val_labels, classnames=list("wxyz")
        )
        tensors, config = head.state()
        again = FewShotHead.from_state(tensors, config, method=method, branches=head.branches, classnames="wxyz")
        assert again.active == head.active and again.chosen_params() == head.chosen_params()
        assert torch.equal(again.logits(test)[0], head.logits(test)[0]), method


def test_as_method_is_a_copy_that_leaves_auto_unchanged(data):
    """Catches as_method changing the auto head it was called on."""
    labels, support, val_labels, val, _, test = data
    head = FewShotHead("auto", select_branches=False).fit(support, labels, val, val_labels, classnames=list("wxyz"))
    before, active = head.logits(test)[0], head.active
    for m in AUTO_CANDIDATES:
        assert head.as_method(m).active == m
    assert head.active == active and torch.equal(head.logits(test)[0], before)


def test_errors_are_the_projects_family(data):
    """Catches cache/ raising bare ValueErrors (the CLI turns only ExpertBridgeError into a clean message)."""
    labels, support, *_ = data
    cases = [
        lambda: FewShotHead("nearest"),
        lambda: FewShotHead(prior="clip"),
        lambda: FewShotHead("zero-shot", prior="prototype"),
        lambda: FewShotHead("cache", prior="text").fit({"a": support["a"]}, labels, classnames="wxyz"),
        lambda: FewShotHead("cache").fit({"a": support["a"][:, :5]}, labels[:5], classnames="wxyz"),  # one class
        lambda: FewShotHead("cache").logits({"a": support["a"][0]}),  # not fitted
        lambda: FewShotHead("cache").state(),
        lambda: FewShotHead("gda").as_method("gda"),
        lambda: AdaptiveCache({"a": support["a"][0]}, labels, CLASSES, fusion="max"),
        lambda: fit_gda(support["a"][0][:5], labels[:5], CLASSES),
    ]
    for i, case in enumerate(cases):
        with pytest.raises(ExpertBridgeError):
            case()
        try:
            case()
        except ConfigError as err:
            assert isinstance(err, ValueError), i  # still a ValueError, as before
    head = FewShotHead("gda").fit({"a": support["a"]}, labels, classnames="wxyz")
    tensors, config = head.state()
    with pytest.raises(ConfigError, match="'head' must be one of"):
        FewShotHead.from_state(tensors, {**config, "head": "auto"}, method="gda", branches=["a"], classnames="wxyz")
    with pytest.raises(ConfigError, match="missing"):
        FewShotHead.from_state(tensors, {**config, "head": "gda"}, method="gda", branches=["b"], classnames="wxyz")


def test_one_error_family_under_two_import_paths():
    """Catches a second copy of the family: ``experts`` re-exports the classes ``cache`` raises."""
    assert experts.ConfigError is errors.ConfigError
    assert experts.ExpertBridgeError is errors.ExpertBridgeError
    from experts.errors import ImageError

    assert ImageError is errors.ImageError
    assert set(METHODS) >= set(AUTO_CANDIDATES)
