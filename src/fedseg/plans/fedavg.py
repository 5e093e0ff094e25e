"""FedAvg (McMahan et al. 2017): every site trains locally, the coordinator averages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fedseg.seeding import stable_seed
from fedseg.plans.averaging import RunningAverage
from fedseg.plans.base import ComputePlan
from fedseg.types import RoundConfig, Update, Weights

WEIGHTINGS = ("n_samples", "uniform")


class FedAvg(ComputePlan):
    """Average of site updates weighted by their training samples (or uniformly)."""

    name = "fedavg"

    def __init__(self, seed: int, local_epochs: int = 1, local_steps: int | None = None,
                 weighted_by: str = "n_samples"):
        if weighted_by not in WEIGHTINGS:
            raise ValueError(f"plan.weighted_by must be one of {WEIGHTINGS}, got '{weighted_by}'")
        self.seed = seed
        self.local_epochs = local_epochs
        self.local_steps = local_steps
        self.weighted_by = weighted_by

    def configure_train(self, round: int, sites: Sequence[str]) -> dict[str, RoundConfig]:
        return {site: RoundConfig(round=round, seed=stable_seed(self.seed, "train", round, site),
                                  local_epochs=self.local_epochs, local_steps=self.local_steps)
                for site in sites}

    def aggregate_train(self, round: int, global_weights: Weights, updates: Mapping[str, Update]) -> Weights:
        average = RunningAverage()
        for site in sorted(updates):  # fixed order: float sums are order-sensitive
            update = updates[site]
            average.add(update.weights, float(update.n_samples) if self.weighted_by == "n_samples" else 1.0)
        return average.result()
