"""FedAvg (McMahan et al. 2017): sampled sites train locally, the coordinator averages.

The base of the averaging family (FedProx, FedOpt): site sampling (``fraction``, ``min_sites``,
see ``sampling``) and the averaging weights (``weighted_by``, ``metric_floor``, see
``weighting``) are shared by all of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedseg.plans.averaging import RunningAverage
from fedseg.plans.base import Aggregation, ComputePlan, site_config
from fedseg.plans.sampling import SiteSampling
from fedseg.plans.weighting import Weighting
from fedseg.types import RoundConfig, Update, Weights


class FedAvg(ComputePlan):
    """Average of site updates weighted by training samples, uniformly, or by validation Dice
    (Sarma et al. 2021; a site without a usable ``val_dice`` counts with ``metric_floor``)."""

    name = "fedavg"

    def __init__(self, seed: int, local_epochs: int = 1, local_steps: int | None = None,
                 weighted_by: str = "n_samples", metric_floor: float = 0.05, fraction: float = 1.0,
                 min_sites: int = 1):
        self.seed = seed
        self.local_epochs = local_epochs
        self.local_steps = local_steps
        self.weighting = Weighting(weighted_by, metric_floor)
        self.sampling = SiteSampling(fraction, min_sites)
        self._summary: dict[str, Any] = {}

    def configure_train(self, round: int, sites: Sequence[str]) -> dict[str, RoundConfig]:
        return {site: site_config(self.seed, round, site, self.local_epochs, self.local_steps, self.train_extra())
                for site in self.sampling.choose(self.seed, round, sites)}

    def train_extra(self) -> dict[str, Any]:
        """Plan-specific instructions for the site trainer (``RoundConfig.extra``)."""
        return {}

    def aggregate_train(self, round: int, global_weights: Weights, updates: Mapping[str, Update]) -> Weights:
        aggregation = self.aggregation(round, global_weights)
        for site in sorted(updates):  # fixed order: float sums are order-sensitive
            aggregation.add(site, updates[site])
        return aggregation.result()

    def aggregation(self, round: int, global_weights: Weights) -> Aggregation:
        return StreamingAverage(self, global_weights)

    def finish_average(self, average: RunningAverage, global_weights: Weights) -> Weights:
        """The next global model from the round's weighted average (FedOpt takes a step instead)."""
        return average.result()

    def round_summary(self) -> dict[str, Any]:
        return dict(self._summary)


class StreamingAverage(Aggregation):
    """Folds each update into a running weighted sum and drops it; remembers the normalised
    weights for the plan's round summary."""

    def __init__(self, plan: FedAvg, global_weights: Weights):
        self.plan, self.global_weights = plan, global_weights
        self.average, self.used = RunningAverage(), {}

    def add(self, site: str, update: Update) -> None:
        self.used[site] = self.plan.weighting(update)
        self.average.add(update.weights, self.used[site])

    def result(self) -> Weights:
        total = self.average.total  # when 0, result() and means() raise "nothing to average"
        self.plan._summary = ({"aggregation_weights": {site: w / total for site, w in sorted(self.used.items())}}
                              if total > 0 else {})
        return self.plan.finish_average(self.average, self.global_weights)
