"""Deterministic train/val/test assignment of a site's cases from the experiment seed."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedseg.data.site import SPLITS, Case
from fedseg.seeding import stable_seed


@dataclass(frozen=True)
class SplitFractions:
    """Fractions of a site's cases for each split; used when a manifest does not fix them."""

    train: float = 0.7
    val: float = 0.1
    test: float = 0.2

    def __post_init__(self) -> None:
        values = (self.train, self.val, self.test)
        if not all(math.isfinite(v) and 0 <= v <= 1 for v in values) or abs(sum(values) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must be within [0, 1] and add up to 1, got "
                             f"train={self.train}, val={self.val}, test={self.test}")


def assign_splits(cases: list[Case], fractions: SplitFractions, seed: int, site: str) -> dict[str, list[Case]]:
    """Cases by split. Manifest splits are kept; the rest are shuffled with a per-site seed."""
    fixed = {s: [c for c in cases if c.split == s] for s in SPLITS}
    free = sorted((c for c in cases if c.split is None), key=lambda c: c.name)  # order-independent
    order = np.random.default_rng(stable_seed(seed, "split", site)).permutation(len(free))
    shuffled = [free[i] for i in order]
    n = len(shuffled)
    n_test = _count(n, fractions.test)
    n_val = _count(n - n_test, fractions.val / max(fractions.train + fractions.val, 1e-12))
    result = {
        "test": fixed["test"] + shuffled[:n_test],
        "val": fixed["val"] + shuffled[n_test:n_test + n_val],
        "train": fixed["train"] + shuffled[n_test + n_val:],
    }
    return {s: sorted(result[s], key=lambda c: c.name) for s in SPLITS}


def _count(n: int, fraction: float) -> int:
    """Round, but give a non-zero fraction at least one case when there are cases to give."""
    if fraction <= 0 or n == 0:
        return 0
    return min(n, max(1, round(n * fraction)))
