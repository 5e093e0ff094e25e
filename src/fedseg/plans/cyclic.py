"""Cyclic weight transfer (Chang et al. 2018, JAMIA, "Distributed deep learning networks among
institutions for medical imaging"; reviewed by Darzidehkalani et al. 2022, J Am Coll Radiol):
one model travels from site to site.

Each runtime round trains exactly one site, starting from the previous site's weights, and the
"aggregate" is that site's weights. ``cycles`` full passes over the sites take
``cycles * len(sites)`` runtime rounds. The order is the sorted site names (``order="fixed"``)
or a seeded shuffle drawn anew for each cycle (``"shuffled"``). Single weight transfer is one
cycle. The schedule depends only on the constructor, so there is no state to checkpoint.

The visited site's update becomes the global model only after it is checked against the current
one (same parameter names, shapes and dtypes, finite values); an update from a site that is not
scheduled in the round is rejected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedseg.plans.base import Aggregation, ComputePlan, site_config
from fedseg.plans.checks import UpdateRejected, check_weights
from fedseg.seeding import stable_seed
from fedseg.types import RoundConfig, Update, Weights

ORDERS = ("fixed", "shuffled")


class CyclicWeightTransfer(ComputePlan):
    name = "cyclic"

    def __init__(self, seed: int, sites: Sequence[str], local_epochs: int = 1, local_steps: int | None = None,
                 cycles: int = 1, order: str = "fixed"):
        if order not in ORDERS:
            raise ValueError(f"plan.order must be one of {ORDERS}, got '{order}'")
        if cycles < 1:
            raise ValueError(f"plan.cycles must be >= 1, got {cycles}")
        if not sites:
            raise ValueError("cyclic weight transfer needs at least one site")
        self.seed, self.sites = seed, sorted(sites)
        self.local_epochs, self.local_steps = local_epochs, local_steps
        self.cycles, self.order = cycles, order
        self._summary: dict[str, Any] = {}

    @property
    def total_rounds(self) -> int:
        return self.cycles * len(self.sites)

    def visit_order(self, cycle: int) -> list[str]:
        if self.order == "fixed":
            return list(self.sites)
        rng = np.random.default_rng(stable_seed(self.seed, "cycle_order", cycle))
        return [self.sites[i] for i in rng.permutation(len(self.sites))]

    def scheduled(self, round: int) -> tuple[str, int]:
        """The site that trains in ``round`` and the cycle the round belongs to."""
        if not 0 <= round < self.total_rounds:
            raise ValueError(f"round {round} is outside the {self.cycles} cycle(s) over {len(self.sites)} "
                             f"site(s) = {self.total_rounds} rounds of this cyclic plan")
        cycle, position = divmod(round, len(self.sites))
        return self.visit_order(cycle)[position], cycle

    def configure_train(self, round: int, sites: Sequence[str]) -> dict[str, RoundConfig]:
        site, _ = self.scheduled(round)
        if site not in sites:
            raise ValueError(f"cyclic weight transfer needs site '{site}' in round {round}, "
                             f"but only {sorted(sites)} are available")
        return {site: site_config(self.seed, round, site, self.local_epochs, self.local_steps,
                                  rounds=self.total_rounds)}

    def aggregate_train(self, round: int, global_weights: Weights, updates: Mapping[str, Update]) -> Weights:
        aggregation = self.aggregation(round, global_weights)
        for site in sorted(updates):
            aggregation.add(site, updates[site])
        return aggregation.result()

    def aggregation(self, round: int, global_weights: Weights) -> Aggregation:
        return Transfer(self, round, global_weights)

    def round_summary(self) -> dict[str, Any]:
        return dict(self._summary)


class Transfer(Aggregation):
    """Takes the round's visited site's update, checked, as the next global model."""

    def __init__(self, plan: CyclicWeightTransfer, round: int, global_weights: Weights):
        self.plan, self.round, self.global_weights = plan, round, global_weights
        self.site, self.cycle = plan.scheduled(round)
        self.weights: Weights | None = None

    def add(self, site: str, update: Update) -> None:
        what = f"update from site {site!r}"
        if site != self.site:
            raise UpdateRejected(f"{what}: round {self.round} expects an update from '{self.site}' only")
        if self.weights is not None:
            raise UpdateRejected(f"{what}: a second update from the same site in one round")
        check_weights(update.weights, self.global_weights, what)
        self.weights = dict(update.weights)

    def result(self) -> Weights:
        if self.weights is None:
            raise ValueError(f"round {self.round} got no update from '{self.site}', the site it visits")
        self.plan._summary = {"visited": self.site, "cycle": self.cycle, "aggregation_weights": {self.site: 1.0}}
        return self.weights


class SingleWeightTransfer(CyclicWeightTransfer):
    """Cyclic weight transfer with a single pass: every site trains once, in turn."""

    name = "single_transfer"

    def __init__(self, seed: int, sites: Sequence[str], local_epochs: int = 1, local_steps: int | None = None,
                 order: str = "fixed"):
        super().__init__(seed, sites, local_epochs, local_steps, cycles=1, order=order)
