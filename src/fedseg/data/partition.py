"""Split one pooled dataset into simulated sites (e.g. MSD hippocampus into 3 "hospitals")."""

from __future__ import annotations

import numpy as np

from fedseg.data.site import Case
from fedseg.seeding import stable_seed


def shard_cases(cases: list[Case], index: int, count: int, seed: int) -> list[Case]:
    """Part ``index`` of ``count`` disjoint, near-equal parts; the same for every site that asks.

    The permutation depends on the seed and the case names only, so sites that name the same
    pooled folder with different indices get disjoint parts that together cover every case.
    """
    if not 0 <= index < count:
        raise ValueError(f"shard index must be in [0, {count}), got {index}")
    names = sorted(c.name for c in cases)
    order = np.random.default_rng(stable_seed(seed, "shard", count, len(names))).permutation(len(names))
    chosen = {names[i] for i in order[index::count]}
    return [c for c in cases if c.name in chosen]
