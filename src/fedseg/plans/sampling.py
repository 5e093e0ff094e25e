"""Which of the available sites train in a round: all of them, or a seeded random fraction.

The choice depends only on (seed, round) and the set of available sites, so a resumed run
samples exactly the sites an uninterrupted one would, with no state to checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedseg.seeding import stable_seed


@dataclass(frozen=True)
class SiteSampling:
    fraction: float = 1.0
    """Share of the available sites per round, rounded up."""
    min_sites: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"plan.fraction must be in (0, 1], got {self.fraction}")
        if self.min_sites < 1:
            raise ValueError(f"plan.min_sites must be >= 1, got {self.min_sites}")

    def check_available(self, n_sites: int) -> None:
        if n_sites < self.min_sites:
            raise ValueError(f"plan.min_sites is {self.min_sites} but only {n_sites} site(s) are available")

    def count(self, n_sites: int) -> int:
        """How many of ``n_sites`` available sites train in a round."""
        self.check_available(n_sites)
        # the tolerance keeps 0.7 * 10 (= 7.000000000000001 in floats) at 7 sites
        return min(n_sites, max(self.min_sites, math.ceil(self.fraction * n_sites - 1e-9)))

    def choose(self, seed: int, round: int, sites: Sequence[str]) -> list[str]:
        """The sites that train in ``round``, in the order given (a function of the arguments alone)."""
        count = self.count(len(sites))
        if count >= len(sites):
            return list(sites)
        rng = np.random.default_rng(stable_seed(seed, "sample", round))
        chosen = set(rng.choice(sorted(sites), size=count, replace=False).tolist())
        return [site for site in sites if site in chosen]
