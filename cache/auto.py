"""What a few-shot head's ``method="auto"`` chooses among, and its rules for choosing (heads, branch subsets).

:class:`cache.head.FewShotHead` applies them when it fits ``auto`` with validation features.

>>> choose_head({m: torch.ones(4) for m in AUTO_CANDIDATES})  # all tied: the reference, the linear probe
'linear'
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch

from cache.search import choose_within_noise

#: what ``method="auto"`` chooses among on validation, the reference first: logistic regression (the
#: linear probe every few-shot paper is measured against), then GDA, then the training-free cache. A later
#: one is chosen only if it beats the earlier ones by more than one paired standard error on validation
#: (:func:`cache.search.choose_within_noise`): within noise, auto is the linear probe.
AUTO_CANDIDATES = ("linear", "gda", "cache")
#: validation images below which ``auto`` does not choose at all and keeps the training-free cache (the
#: class centroids, refined by the support keys). Heads differ by 1-3 points; two heads that disagree on
#: 10 % of n images have a paired standard error of about sqrt(0.1 / n): 3 points at n = 100, 11 at the
#: 8 images ants/bees carves at 1-4 shots, where choosing among heads is choosing by chance.
AUTO_MIN_VALIDATION = 100
#: up to this many branches ``auto`` tries every subset of them; beyond, all, all-but-one and each alone
EXHAUSTIVE_SUBSETS = 3


def choose_head(correct: Mapping[str, torch.Tensor]) -> str:
    """``auto``'s choice (given at least :data:`AUTO_MIN_VALIDATION` images) from each candidate's per-image
    correctness on validation: the first of
    :data:`AUTO_CANDIDATES` within one paired standard error of the best (the one-SE rule), so a head
    other than linear must beat it by more than the validation split can resolve.

    >>> right = torch.tensor([1, 1, 1, 1, 1, 1, 1, 0]); one_more = torch.ones(8)
    >>> choose_head({"linear": right, "gda": one_more, "cache": right})   # 1 image of 8: noise
    'linear'
    """
    return AUTO_CANDIDATES[choose_within_noise([correct[m] for m in AUTO_CANDIDATES])]


def branch_subsets(names: Sequence[str]) -> list[tuple[str, ...]]:
    """The subsets of ``names`` that ``auto`` tries, largest first: all of them up to
    :data:`EXHAUSTIVE_SUBSETS` branches; beyond, all, each all-but-one and each alone.

    >>> branch_subsets(["a", "b"])
    [('a', 'b'), ('a',), ('b',)]
    """
    names = list(names)
    if len(names) <= EXHAUSTIVE_SUBSETS:
        sizes = range(len(names), 0, -1)
        return [c for r in sizes for c in itertools.combinations(names, r)]
    return [tuple(names), *itertools.combinations(names, len(names) - 1), *((n,) for n in names)]
