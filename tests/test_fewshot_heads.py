"""Each few-shot head, on real features, does what its name says: a broken head fails here.

Real EfficientNet-Lite0 features of DTD-10 (10 texture classes): 4 shots per class with the image
and one augmented view, 8 ``val`` and 12 ``test`` images per class, encoded once per session.
Each test names the fault it catches (each was checked by breaking the code on purpose):
a negated cache or GDA head, an α/β search that ignores β, training that keeps the last epoch
instead of the best, a GDA α grid other than the reference code's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DTD10_SHOTS, DTD10_VIEWS, FewShotFeatures, dtd10_features

from cache.adapter import AdaptiveCache
from cache.linear import LINEAR_CS, anchor_scale, fit_anchored_path, fit_linear_path, search_linear
from cache.search import (
    DEFAULT_BETAS,
    GDA_ALPHAS,
    ONE_SE,
    accuracy,
    choose_within_noise,
    paired_standard_error,
    search_alpha_beta,
)
from cache.training import train_keys
from workflows.fewshot import (
    AUTO_CANDIDATES,
    AUTO_MIN_VALIDATION,
    STANDARDIZE_MIN_SHOTS,
    FewShotClassifier,
    choose_head,
    nearest_centroid_accuracy,
)

SHOTS, VIEWS = DTD10_SHOTS, DTD10_VIEWS
CHANCE = 0.1  # 10 classes


class Features(FewShotFeatures):
    def classifier(self, method: str, encoder, **kwargs) -> FewShotClassifier:
        clf = FewShotClassifier([encoder], method=method, augment_views=VIEWS, **kwargs)
        return clf.fit_features(self.views, self.labels, self.val, self.val_labels, classnames=self.classnames)

    def test_accuracy(self, clf: FewShotClassifier) -> float:
        return clf.evaluate_features(self.test, self.test_labels)["accuracy"]

    def centroid(self) -> float:
        plain = {n: v[0] for n, v in self.views.items()}
        return nearest_centroid_accuracy(plain, self.labels, self.test, self.test_labels)


@pytest.fixture(scope="session")
def dtd(dtd10, efficientnet, tmp_path_factory) -> Features:
    return dtd10_features(dtd10, [efficientnet], tmp_path_factory.mktemp("dtd"), as_type=Features)


def test_features_are_informative_enough_for_the_checks_below(dtd):
    assert dtd.centroid() > 0.55  # ~0.7 here; far above chance, so a head voting wrongly shows


@pytest.mark.parametrize("method", ["cache", "gda", "linear", "auto"])
def test_each_head_with_its_validation_choice_is_near_or_above_the_centroid(dtd, efficientnet, method):
    """Catches a negated cache or GDA head (the validation search cannot hide a head that votes wrongly)."""
    acc = dtd.test_accuracy(dtd.classifier(method, efficientnet))
    assert acc >= dtd.centroid() - 0.04, (method, acc, dtd.centroid())


@pytest.mark.parametrize("method", ["cache", "gda"])
def test_each_head_alone_without_the_prior_classifies_far_above_chance(dtd, efficientnet, method):
    """The head's own logits (no prototype prior to lean on): a negated head falls to or below chance."""
    acc = dtd.test_accuracy(dtd.classifier(method, efficientnet, prior="none"))
    assert acc >= dtd.centroid() - 0.1 and acc > 5 * CHANCE, (method, acc)  # GDA alone: ~0.74 vs ~0.82


def test_every_cell_of_the_alpha_beta_grid_is_the_accuracy_of_the_cache_set_to_it(dtd):
    """Catches a search that ignores β (or α): each grid cell must be what predicting with (α, β) gives."""
    keys = {n: v.mean(0) for n, v in dtd.views.items()}
    prior = {n: torch.nn.functional.normalize(v[0], dim=-1) for n, v in dtd.views.items()}
    protos = {
        n: torch.nn.functional.normalize(torch.stack([p[dtd.labels == c].mean(0) for c in range(10)]), dim=-1).T
        for n, p in prior.items()
    }
    cache = AdaptiveCache(keys, dtd.labels, 10, prior_weights=protos)
    result = search_alpha_beta(cache, dtd.val, dtd.val_labels)
    assert len(set(result.grid.max(1).round(6))) > 1, "β makes no difference on these features: not a test"
    for bi in (0, len(result.betas) // 2, len(result.betas) - 1):
        for ai in (0, len(result.alphas) // 2, len(result.alphas) - 1):
            cache.alpha, cache.beta = result.alphas[ai], result.betas[bi]
            with torch.no_grad():
                got = accuracy(cache(dtd.val).logits, dtd.val_labels)
            assert got == pytest.approx(result.grid[bi, ai], abs=1e-6), (result.betas[bi], result.alphas[ai])
    assert result.grid[result.betas.index(result.beta), result.alphas.index(result.alpha)] == result.grid.max()
    assert result.betas == DEFAULT_BETAS


def test_training_keeps_the_keys_of_the_best_validation_epoch(dtd):
    """Catches keep-last-epoch: with a step size that overshoots, the last epoch is not the best one."""
    keys = {n: v.mean(0) for n, v in dtd.views.items()}
    cache = AdaptiveCache(keys, dtd.labels, 10, alpha=1.0, beta=5.5)
    result = train_keys(cache, dtd.views, dtd.labels, dtd.val, dtd.val_labels, epochs=12, lr=0.05, with_prior=False)
    val_accs = [h["val_accuracy"] for h in result.history]
    assert result.best_epoch < len(val_accs), "the last epoch is the best: cannot tell keep-best from keep-last"
    assert val_accs[-1] < max(val_accs)
    with torch.no_grad():
        kept = accuracy(cache(dtd.val).logits, dtd.val_labels)
    assert kept == pytest.approx(max(val_accs)) == pytest.approx(result.best_val_accuracy)
    assert result.best_epoch == int(np.argmax(val_accs)) + 1


def test_gda_alpha_is_searched_on_the_reference_grid_and_the_best_value_is_kept(dtd, efficientnet):
    """Catches a wrong grid: the GDA reference code searches α in 1e-4 … 1e2, one value per decade."""
    assert GDA_ALPHAS == pytest.approx((1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0))
    clf = dtd.classifier("gda", efficientnet)
    searched = clf.report["search"]
    assert searched["gda_alphas"] == {"min": 1e-4, "max": 100.0, "points": 7}
    prior = clf.cache.prior({n: torch.nn.functional.normalize(f, dim=-1) for n, f in dtd.val.items()})
    gda = clf.gda.logits(clf._concat(dtd.val))
    scores = [accuracy(prior + a * gda, dtd.val_labels) for a in GDA_ALPHAS]
    assert searched["val_accuracy"] == pytest.approx(max(scores))
    assert clf.gda_alpha == GDA_ALPHAS[int(np.argmax(scores))]


def test_auto_predicts_with_the_head_its_rule_picks_from_each_candidates_validation_predictions(dtd, efficientnet):
    """Catches auto ignoring its rule (or scoring other predictions than its heads make): the chosen head is
    ``choose_head`` of each candidate's validation correctness, recomputed here, at 1 and 4 shots.

    The rule needs 100 validation images: the fixture's 80 ``val`` and 120 ``test`` images are pooled
    as validation here (this checks the rule, not an accuracy)."""
    pool = {n: torch.cat([dtd.val[n], dtd.test[n]]) for n in dtd.val}
    pool_labels = torch.cat([dtd.val_labels, dtd.test_labels])
    assert len(pool_labels) >= AUTO_MIN_VALIDATION
    for shots in (1, SHOTS):
        keep = torch.cat([torch.where(dtd.labels == c)[0][:shots] for c in range(10)])
        views, labels = {n: v[:, keep] for n, v in dtd.views.items()}, dtd.labels[keep]
        clf = FewShotClassifier([efficientnet], method="auto", augment_views=VIEWS)
        clf.fit_features(views, labels, pool, pool_labels, classnames=dtd.classnames)
        scores = clf.report["auto"]["val_accuracy"]
        correct = {}
        for m in AUTO_CANDIDATES:  # each candidate as fitted alone (test_fewshot_sweep checks the equality)
            correct[m] = clf.as_method(m).logits(pool)[0].argmax(-1) == pool_labels
            assert float(correct[m].float().mean()) == pytest.approx(scores[m])
        best = max(AUTO_CANDIDATES, key=lambda m: scores[m])
        se = {m: paired_standard_error(correct[best], correct[m]) for m in AUTO_CANDIDATES}
        assert clf.head == choose_head(correct) == clf.chosen_params()["head"], (shots, scores, se)
        assert clf.report["auto"]["standard_error"] == pytest.approx(se)
        assert torch.equal(clf.logits(dtd.test)[0], clf.as_method(clf.head).logits(dtd.test)[0])


def test_auto_keeps_the_cache_when_validation_is_too_small_to_choose(dtd, efficientnet):
    """Catches choosing among heads on a handful of images: with 80 validation images (< 100) auto is the
    cache, though the one-SE rule would take another head on them."""
    assert AUTO_MIN_VALIDATION == 100 and len(dtd.val_labels) == 80
    clf = dtd.classifier("auto", efficientnet)
    correct = {m: clf.as_method(m).logits(dtd.val)[0].argmax(-1) == dtd.val_labels for m in AUTO_CANDIDATES}
    assert choose_head(correct) != "cache", "the rule would take the cache anyway: not a test"
    assert clf.head == "cache" and "80 validation images" in clf.report["auto"]["rule"]
    assert torch.equal(clf.logits(dtd.test)[0], clf.as_method("cache").logits(dtd.test)[0])


def test_auto_keeps_linear_unless_a_rival_wins_by_more_than_one_standard_error():
    """Pins auto's rule: linear is the reference; gda, then cache, must beat it beyond one paired standard
    error. Catches taking the best on validation, always taking linear, and another order."""
    n = 100
    linear = torch.zeros(n, dtype=torch.bool)
    linear[:80] = True
    close, far = linear.clone(), linear.clone()
    close[80:83] = True  # +3 images: beyond one SE (0.017)
    far[80:90] = True  # +10 images
    one_more = linear.clone()
    one_more[80] = True  # +1 image: within one SE (0.01)
    assert AUTO_CANDIDATES == ("linear", "gda", "cache")
    assert choose_head({"linear": linear, "gda": one_more, "cache": one_more}) == "linear"  # not the best
    assert choose_head({"linear": linear, "gda": linear, "cache": far}) == "cache"  # beaten beyond noise
    assert choose_head({"linear": linear, "gda": close, "cache": far}) == "cache"  # the best, when gda is beaten too
    assert choose_head({"linear": linear, "gda": far, "cache": far}) == "gda"  # gda before cache
    assert choose_head({"linear": linear, "gda": far, "cache": close}) == "gda"


def test_the_one_standard_error_rule_keeps_the_simpler_candidate_unless_beaten_beyond_noise():
    """Pins the rule itself: ties and wins within one paired standard error go to the earlier (simpler)
    candidate; a win by more than that goes to the better one, whatever its place."""
    n = 100
    simple = torch.zeros(n)
    simple[:80] = 1  # 80 % right
    close = simple.clone()
    close[80:83] = 1  # 83 %: 3 more right, SE of the difference sqrt(3/100 · 97/99)/10 ≈ 0.017 < 0.03
    far = simple.clone()
    far[80:90] = 1  # 90 %: 10 more right, SE ≈ 0.03 < 0.10
    assert paired_standard_error(close, simple) == pytest.approx(float((close - simple).std()) / 10)
    assert choose_within_noise([simple, close]) == 1  # 0.03 > 1 SE (0.017): beyond noise
    assert choose_within_noise([simple, close], k=2.0) == 0  # within 2 SE (0.034)
    assert choose_within_noise([simple, far, close]) == 1
    assert choose_within_noise([far, simple]) == 0
    assert choose_within_noise([simple, simple.clone()]) == 0  # an exact tie: the simpler
    tiny = [torch.tensor([1.0, 1, 1, 0, 1, 0, 1, 1]), torch.tensor([1.0, 1, 1, 1, 1, 0, 1, 1])]
    assert choose_within_noise(tiny) == 0  # one image of eight (ants/bees' validation split) is noise
    assert ONE_SE == 1.0


def test_linear_head_uses_every_view_as_a_sample_and_chooses_c_on_validation(dtd, efficientnet):
    clf = dtd.classifier("linear", efficientnet)
    searched = clf.report["search"]
    assert searched["cs"]["points"] == len(LINEAR_CS)
    # 4 shots: never standardized; regularized toward zero or toward the centroid classifier (anchored)
    assert searched["linear_samples"] in ("plain", "views", "plain+anchored", "views+anchored")
    assert searched["standardize_searched"] == [False]
    assert dtd.test_accuracy(clf) > 0.55


def test_linear_head_offers_standardization_only_from_eight_shots_per_class(dtd, efficientnet):
    """Catches standardizing on a handful of samples: at 4 shots it is not searched, at 8 it is."""
    assert STANDARDIZE_MIN_SHOTS == 8
    eight = {n: v.reshape(1, -1, v.shape[-1]) for n, v in dtd.views.items()}  # both views as images: 8 per class
    clf = FewShotClassifier([efficientnet], method="linear", augment_views=1)
    clf.fit_features(eight, dtd.labels.repeat(VIEWS), dtd.val, dtd.val_labels, classnames=dtd.classnames)
    assert clf.report["search"]["standardize_searched"] == [False, True]


def _centroid_predictions(features: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    means = torch.stack([features[labels == k].mean(0) for k in range(int(labels.max()) + 1)])
    return (queries @ torch.nn.functional.normalize(means, dim=-1).T).argmax(-1)


def test_the_anchored_linear_head_runs_from_the_centroid_at_small_c_to_the_plain_probe_at_large_c(dtd):
    """Catches an anchor that is not the class means (or is dropped): its smallest C must predict as the
    nearest centroid does, its largest as the unanchored probe does, on real DTD-10 features."""
    x = torch.nn.functional.normalize(dtd.views["timm"][0].float(), dim=-1)
    test = torch.nn.functional.normalize(dtd.test["timm"].float(), dim=-1)
    anchored = fit_anchored_path(x, dtd.labels, 10, cs=(1e-4, 1e4))
    plain = fit_linear_path(x, dtd.labels, 10, cs=(1e-4, 1e4))
    centroid = _centroid_predictions(x, dtd.labels, test)
    small, large = (h.logits(test).argmax(-1) for h in anchored)
    assert (small == centroid).float().mean() == 1.0
    agree_plain = (large == plain[1].logits(test).argmax(-1)).float().mean()
    assert agree_plain > 0.95 and agree_plain > (large == centroid).float().mean()


def test_the_anchor_scale_scores_each_sample_against_its_class_mean_without_itself(dtd):
    """Catches a scale fitted with each sample inside its own class mean: every sample then looks easy and
    the scale runs to its bound (checked against leave-one-out cosines written out by hand)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    x = torch.nn.functional.normalize(dtd.views["timm"][0].double(), dim=-1).numpy()
    y = dtd.labels.numpy()
    cosines = np.zeros((len(y), 10))
    for i in range(len(y)):
        for k in range(10):
            members = (y == k) & (np.arange(len(y)) != i)
            mean = x[members].sum(0)
            cosines[i, k] = x[i] @ mean / np.linalg.norm(mean)

    def loss(tau: float) -> float:
        return -float(log_softmax(tau * cosines, axis=1)[np.arange(len(y)), y].sum())

    expected = minimize_scalar(loss, bounds=(0.0, 100.0), method="bounded").x
    assert anchor_scale(x, y, 10) == pytest.approx(expected, rel=1e-3)
    assert 1.0 < expected < 90.0  # a scale inside the bounds: the samples are not trivially separable


def test_with_too_few_validation_images_to_choose_the_linear_head_falls_back_to_the_centroid(dtd):
    """Catches the anchored paths losing their place first in the search: when every candidate ties on
    validation (2 images), the choice is the anchored head at the smallest C, the nearest centroid."""
    x = torch.nn.functional.normalize(dtd.views["timm"][0].float(), dim=-1)
    val = torch.nn.functional.normalize(dtd.val["timm"].float(), dim=-1)
    centroid = _centroid_predictions(x, dtd.labels, val)
    right = (centroid == dtd.val_labels).nonzero().flatten()[:2]  # two images every head gets right
    head, choice, acc = search_linear({"plain": (x, dtd.labels)}, 10, val[right], dtd.val_labels[right])
    assert choice == {"samples": "plain+anchored", "C": min(LINEAR_CS)} and acc == 1.0
    test = torch.nn.functional.normalize(dtd.test["timm"].float(), dim=-1)
    assert torch.equal(head.logits(test).argmax(-1), _centroid_predictions(x, dtd.labels, test))
