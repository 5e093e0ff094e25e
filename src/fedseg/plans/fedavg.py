"""FedAvg (McMahan et al. 2017): sampled sites train locally, the coordinator averages.

The base of the averaging family (FedProx, FedOpt): site sampling (``fraction``, ``min_sites``,
see ``sampling``), the averaging weights (``weighted_by``, ``metric_floor``, see ``weighting``)
and how updates combine (``aggregator``: the streaming mean or a robust rule, see ``robust``) are
shared by all of them. Every update is checked against the global model before it is used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedseg.plans.averaging import cast_like
from fedseg.plans.base import Aggregation, ComputePlan, site_config
from fedseg.plans.checks import check_weights
from fedseg.plans.client_dp import ClientDP
from fedseg.plans.robust import Aggregator
from fedseg.plans.sampling import SiteSampling
from fedseg.plans.weighting import Weighting
from fedseg.types import RoundConfig, Update, Weights


class FedAvg(ComputePlan):
    """Average of site updates weighted by training samples, uniformly, or by validation Dice
    (Sarma et al. 2021; a site without a usable ``val_dice`` counts with ``metric_floor``), for
    ``rounds`` rounds."""

    name = "fedavg"

    def __init__(self, seed: int, local_epochs: int = 1, local_steps: int | None = None,
                 weighted_by: str = "n_samples", metric_floor: float = 0.05, fraction: float = 1.0,
                 min_sites: int = 1, aggregator: str = "mean", trim: float | None = None,
                 clip_factor: float | None = None, rounds: int = 1, local_norm: bool = False):
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"rounds must be a whole number >= 1, got {rounds!r}")
        self.seed = seed
        self.local_epochs = local_epochs
        self.local_steps = local_steps
        self.rounds = rounds
        self.local_norm = local_norm is True
        """FedBN (``training.local_norm``): each site keeps its own normalisation across rounds."""
        self.weighting = Weighting(weighted_by, metric_floor)
        self.sampling = SiteSampling(fraction, min_sites)
        self.aggregator = Aggregator(aggregator, trim, clip_factor)
        self.client_dp: ClientDP | None = None
        """Client-level DP (``[privacy] dp = "client"``): clip each update, noise the mean."""
        self._summary: dict[str, Any] = {}

    @property
    def total_rounds(self) -> int:
        return self.rounds

    def check_sites(self, n_sites: int) -> None:
        """``ValueError`` if the plan cannot run on a federation of ``n_sites`` sites."""
        self.aggregator.check_sites(self.sampling.count(n_sites))

    def configure_train(self, round: int, sites: Sequence[str]) -> dict[str, RoundConfig]:
        return {site: site_config(self.seed, round, site, self.local_epochs, self.local_steps, self.train_extra(),
                                  rounds=self.total_rounds)
                for site in self.sampling.choose(self.seed, round, sites)}

    def train_extra(self) -> dict[str, Any]:
        """Plan-specific instructions for the site trainer (``RoundConfig.extra``); a subclass adds its own
        to these."""
        return {"local_norm": True} if self.local_norm else {}

    def aggregate_train(self, round: int, global_weights: Weights, updates: Mapping[str, Update]) -> Weights:
        aggregation = self.aggregation(round, global_weights)
        for site in sorted(updates):  # fixed order: float sums are order-sensitive
            aggregation.add(site, updates[site])
        return aggregation.result()

    def aggregation(self, round: int, global_weights: Weights) -> Aggregation:
        return Averaging(self, global_weights, round)

    def finish(self, combined: dict[str, np.ndarray], global_weights: Weights) -> Weights:
        """The next global model from the round's combination in float64 (FedOpt takes a step instead)."""
        return cast_like(combined, global_weights)

    def conclude(self, combined: dict[str, np.ndarray], global_weights: Weights, round: int, count: int,
                 summary: dict[str, Any]) -> Weights:
        """The round's end for every way of combining (in the clear or a secure sum): client-level DP's
        noise on the mean of ``count`` updates, then ``finish``; ``summary`` is the round's record."""
        if self.client_dp is not None:
            combined = self.client_dp.noised(combined, round, count)
            summary = {**summary, **self.client_dp.summary(round)}
        self._summary = summary
        return self.finish(combined, global_weights)

    def round_summary(self) -> dict[str, Any]:
        return dict(self._summary)



class Averaging(Aggregation):
    """Checks each update (its weight, then every parameter against the global model) and hands it
    to the plan's combiner: the streaming mean folds it in and drops it, robust rules keep it."""

    def __init__(self, plan: FedAvg, global_weights: Weights, round: int = 0):
        self.plan, self.global_weights, self.round = plan, global_weights, round
        self.combiner = plan.aggregator.combiner(global_weights)
        self.clipped: list[str] = []

    def add(self, site: str, update: Update) -> None:
        what = f"update from site {site!r}"
        weight = self.plan.weighting(update, what)
        weights = update.weights
        if self.plan.client_dp is not None:  # checked in full first: shrinking reads every parameter
            check_weights(weights, self.global_weights, what)
            weights, moved = self.plan.client_dp.clipped(weights, self.global_weights)
            self.clipped += [site] if moved else []
        self.combiner.add(site, weights, weight, what)

    def result(self) -> Weights:
        combined, summary = self.combiner.combine()
        if self.clipped:
            summary["clipped_to_dp_bound"] = self.clipped
        return self.plan.conclude(combined, self.global_weights, self.round, len(summary.get(
            "aggregation_weights", {})) or 1, summary)
