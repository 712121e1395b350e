"""Cache-model formulas, each checked against a plain independent implementation on fixed tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cache.adapter import AdaptiveCache, affinity
from cache.fusion import adaptive_fuse, adaptive_weights, standardize
from cache.gda import fit_gda
from cache.search import search_alpha_beta, search_gda_alpha
from cache.training import train_keys

Q = torch.tensor([[0.6, 0.8, 0.0], [0.0, 1.0, 0.0]])
K = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8], [0.0, 0.0, 1.0]])


def test_affinity_matches_the_formula_elementwise():
    beta = 3.0
    a = affinity(Q, K, beta)
    for i in range(2):
        for j in range(3):
            cos = sum(float(Q[i, d]) * float(K[j, d]) for d in range(3))
            assert float(a[i, j]) == pytest.approx(math.exp(-beta * (1 - cos)), rel=1e-6)
    assert float(affinity(K[:1], K[:1], 7.0)) == pytest.approx(1.0)


def _standardize_ref(row):
    row = np.asarray(row, dtype=np.float64)
    return (row - row.mean()) / row.std(ddof=1)


def test_fusion_weights_and_result_match_a_loop_implementation():
    g = torch.Generator().manual_seed(0)
    prior = torch.randn(4, 5, generator=g)
    branches = [torch.randn(4, 5, generator=g) for _ in range(3)]
    fused, weights = adaptive_fuse(prior, branches)
    for s in range(4):
        ref = _standardize_ref(prior[s])
        zs = [_standardize_ref(b[s]) for b in branches]
        agreement = np.array([float(z @ ref) for z in zs])
        w = np.exp(agreement - agreement.max())
        w /= w.sum()
        np.testing.assert_allclose(weights[s].numpy(), w, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(fused[s].numpy(), sum(wi * z for wi, z in zip(w, zs)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(standardize(prior).std(-1), torch.ones(4), atol=1e-4, rtol=0)


def test_prior_is_the_mean_of_branch_priors_times_100():
    g = torch.Generator().manual_seed(5)
    keys = {"a": torch.randn(4, 3, generator=g), "b": torch.randn(4, 2, generator=g)}
    wa, wb = torch.randn(3, 2, generator=g), torch.randn(2, 2, generator=g)
    cache = AdaptiveCache(keys, torch.tensor([0, 1, 0, 1]), 2, prior_weights={"a": wa, "b": wb})
    fa, fb = torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g)
    torch.testing.assert_close(cache.prior({"a": fa, "b": fb}), 50 * (fa @ wa + fb @ wb))
    with pytest.raises(ValueError, match="must be \\(D, C\\)"):
        AdaptiveCache(keys, torch.tensor([0, 1, 0, 1]), 2, prior_weights={"a": wb})


def test_fusion_prefers_the_branch_that_agrees_with_the_prior():
    prior = torch.tensor([[3.0, 0.0, -1.0]])
    w = adaptive_weights(prior, [prior * 2 + 1, -prior])
    assert float(w[0, 0]) > 0.95


def test_cache_logits_tip_adapter_sum_fusion_by_hand():
    """fusion='sum' is Tip-Adapter: 100·f·W + α·exp(-β(1-f·Kᵀ))·L."""
    labels = torch.tensor([0, 1, 1])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # (D, C)
    cache = AdaptiveCache({"clip": K}, labels, 2, prior_weights={"clip": text}, alpha=2.0, beta=4.0, fusion="sum")
    with torch.no_grad():
        out = cache({"clip": Q})
    for i in range(2):
        for c in range(2):
            prior = 100 * sum(float(Q[i, d]) * float(text[d, c]) for d in range(3))
            cached = sum(
                math.exp(-4.0 * (1 - float(Q[i] @ K[j]))) * (1.0 if int(labels[j]) == c else 0.0) for j in range(3)
            )
            assert float(out.logits[i, c]) == pytest.approx(prior + 2.0 * cached, rel=1e-5)


def test_cafo_adaptive_output_is_prior_plus_alpha_times_fused():
    g = torch.Generator().manual_seed(1)
    keys = {"a": torch.randn(6, 4, generator=g), "b": torch.randn(6, 3, generator=g)}
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    text = torch.nn.functional.normalize(torch.randn(4, 3, generator=g), dim=0)
    cache = AdaptiveCache(keys, labels, 3, prior_weights={"a": text}, alpha=1.7, beta=2.0)
    q = {"a": torch.randn(5, 4, generator=g), "b": torch.randn(5, 3, generator=g)}
    out = cache(q)
    qa, qb = (torch.nn.functional.normalize(q[n], dim=-1) for n in "ab")
    ka, kb = (torch.nn.functional.normalize(keys[n], dim=-1) for n in "ab")
    onehot = torch.nn.functional.one_hot(labels, 3).float()
    prior = 100 * qa @ text
    fused, _ = adaptive_fuse(prior, [affinity(qa, ka, 2.0) @ onehot, affinity(qb, kb, 2.0) @ onehot])
    torch.testing.assert_close(out.logits, prior + 1.7 * fused, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(sum(out.branches.values()) + out.prior, out.logits)


def test_support_order_does_not_change_predictions():
    g = torch.Generator().manual_seed(2)
    keys, labels = torch.randn(10, 8, generator=g), torch.arange(10) % 3
    q = torch.randn(7, 8, generator=g)
    perm = torch.randperm(10, generator=g)
    a = AdaptiveCache({"x": keys}, labels, 3)({"x": q}).logits
    b = AdaptiveCache({"x": keys[perm]}, labels[perm], 3)({"x": q}).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_prior_logits_do_not_depend_on_the_weights_memory_layout():
    """Fitting makes prototypes as a transposed view, loading reads them row-major: both must give the same bits,
    or a saved model does not reproduce its own predictions."""
    gen = torch.Generator().manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(40, 1280, generator=gen), dim=-1)
    labels = torch.arange(40) % 2
    prototypes = torch.stack([keys[labels == c].mean(0) for c in range(2)])  # (C, D)
    query = {"x": torch.nn.functional.normalize(torch.randn(24, 1280, generator=gen), dim=-1)}
    fitted = AdaptiveCache({"x": keys}, labels, 2, prior_weights={"x": prototypes.T})
    loaded = AdaptiveCache({"x": keys}, labels, 2, prior_weights={"x": prototypes.T.contiguous()})
    assert torch.equal(fitted(query).logits, loaded(query).logits)
    head = fit_gda(keys, labels, 2)
    transposed = type(head)(head.weight.T.contiguous().T, head.bias)
    assert torch.equal(head.logits(query["x"]), transposed.logits(query["x"]))


@pytest.mark.parametrize("n, dim", [(30, 6), (12, 40)])  # more samples than dimensions, and fewer (few-shot)
def test_gda_matches_a_numpy_implementation(n, dim):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, dim))
    y = np.repeat([0, 1, 2], n // 3)
    x[y == 1] += 1.5
    head = fit_gda(torch.tensor(x, dtype=torch.float32), torch.tensor(y), 3)
    mus = np.stack([x[y == c].mean(0) for c in range(3)])
    centred = x - mus[y]
    cov = np.cov(centred.T)  # unbiased, rows = variables
    prec = dim * np.linalg.pinv((n - 1) * cov + np.trace(cov) * np.eye(dim))
    w = mus @ prec
    b = np.log(1 / 3) - 0.5 * np.einsum("cd,de,ce->c", mus, prec, mus)
    np.testing.assert_allclose(head.weight.numpy(), w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(head.bias.numpy(), b, rtol=1e-4, atol=1e-5)
    q = rng.normal(size=(4, dim))
    np.testing.assert_allclose(
        head.logits(torch.tensor(q, dtype=torch.float32)).numpy(), q @ w.T + b, rtol=1e-4, atol=1e-4
    )


def test_gda_one_shot_falls_back_to_nearest_mean_and_needs_every_class():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    head = fit_gda(x, torch.tensor([0, 1]), 2)
    assert head.logits(torch.tensor([[0.9, 0.2], [0.1, 0.8]])).argmax(-1).tolist() == [0, 1]
    with pytest.raises(ValueError, match="empty classes: \\[2\\]"):
        fit_gda(x, torch.tensor([0, 1]), 3)


def test_search_finds_the_best_grid_point_by_brute_force():
    g = torch.Generator().manual_seed(3)
    keys, labels = torch.randn(12, 5, generator=g), torch.arange(12) % 3
    text = torch.nn.functional.normalize(torch.randn(5, 3, generator=g), dim=0)
    cache = AdaptiveCache({"clip": keys}, labels, 3, prior_weights={"clip": text})
    vq, vl = torch.randn(30, 5, generator=g), torch.randint(0, 3, (30,), generator=g)
    alphas, betas = (0.1, 1.0, 10.0), (1.0, 5.0)
    res = search_alpha_beta(cache, {"clip": vq}, vl, alphas=alphas, betas=betas)
    with torch.no_grad():
        brute = {
            (a, b): float((cache({"clip": vq}, alpha=a, beta=b).logits.argmax(-1) == vl).float().mean())
            for b in betas
            for a in alphas
        }
    assert res.val_accuracy == max(brute.values()) == brute[(res.alpha, res.beta)]
    assert res.grid.shape == (2, 3)


def test_gda_alpha_search_uses_the_papers_grid():
    head = fit_gda(torch.eye(3), torch.tensor([0, 1, 2]), 3)
    prior = torch.tensor([[0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])  # wrong prior: needs a large α to be overruled
    alpha, acc = search_gda_alpha(head, torch.eye(3)[:2], prior, torch.tensor([0, 1]))
    assert acc == 1.0 and alpha >= 1.0


def test_training_keys_improves_the_fit_and_keeps_the_best_epoch():
    g = torch.Generator().manual_seed(4)
    centres = torch.randn(3, 16, generator=g)
    labels = torch.arange(24) % 3
    support = centres[labels] + 0.9 * torch.randn(24, 16, generator=g)
    views = {"x": torch.stack([support + 0.3 * torch.randn(24, 16, generator=g) for _ in range(4)])}
    val_labels = torch.arange(60) % 3
    val = {"x": centres[val_labels] + 0.9 * torch.randn(60, 16, generator=g)}
    cache = AdaptiveCache({"x": support}, labels, 3, beta=3.0)
    before = cache.keys_["x"].detach().clone()
    result = train_keys(cache, views, labels, val, val_labels, epochs=15, lr=5e-3, seed=0)
    assert len(result.history) == 15 and result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.best_val_accuracy == max(h["val_accuracy"] for h in result.history)
    assert not torch.equal(before, cache.keys_["x"].detach())
    with torch.no_grad():
        assert float((cache(val).logits.argmax(-1) == val_labels).float().mean()) == result.best_val_accuracy
