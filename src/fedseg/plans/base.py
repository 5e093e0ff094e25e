"""The compute-plan contract shared by the simulation and deployment runtimes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from fedseg.plans.checks import UpdateRejected, check_weights
from fedseg.seeding import stable_seed
from fedseg.types import RoundConfig, Update, Weights


class ComputePlan(ABC):
    """A handful of hooks, like Flower's Strategy: the runtime calls them, the plan decides.

    Plans must be deterministic given their constructor arguments and ``state_dict``, so a
    run resumed from a checkpoint continues exactly where it stopped.
    """

    name: str = "plan"

    @property
    @abstractmethod
    def total_rounds(self) -> int:
        """The runtime rounds this plan runs (for cyclic transfer: cycles x sites)."""

    @abstractmethod
    def configure_train(self, round: int, sites: Sequence[str]) -> dict[str, RoundConfig]:
        """Which of the available ``sites`` train in ``round`` (0-based), and how. A pure function
        of its arguments and the plan's constructor and state: calling it changes nothing, so a
        progress display may call it to learn who trains in a round."""

    @abstractmethod
    def aggregate_train(self, round: int, global_weights: Weights, updates: Mapping[str, Update]) -> Weights:
        """The next global model from this round's updates."""

    def outgoing(self, round: int, weights: Weights) -> Weights:
        """What the sites that train in ``round`` receive for the global model ``weights``; their
        updates are checked and aggregated against it, and the aggregation's result is a model again
        (SCAFFOLD adds its control variate under ``types.CONTROL_PREFIX``)."""
        return weights

    def aggregation(self, round: int, global_weights: Weights) -> Aggregation:
        """An aggregation that takes this round's updates one at a time, as they arrive over a
        network. Its ``add`` checks an update in full against ``global_weights`` and raises
        ``UpdateRejected`` before using any of it. The default keeps the updates and calls
        ``aggregate_train`` at the end; plans that can fold an update in and drop it (the averaging
        family) override this, so a coordinator holds about two models whatever the number of sites."""
        return CollectedAggregation(self, round, global_weights)

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint after each round (empty for stateless plans): JSON-serialisable
        values and numpy arrays, nested in dicts and lists."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def round_summary(self) -> dict[str, Any]:
        """What the last ``aggregate_train`` did, JSON-serialisable, for the round's metrics: e.g.
        ``{"aggregation_weights": {site: normalised weight}}``. Empty before the first call."""
        return {}


class Aggregation(ABC):
    @abstractmethod
    def add(self, site: str, update: Update) -> None:
        """Fold in one site's update; ``UpdateRejected`` (and nothing used) if the plan cannot use it."""

    @abstractmethod
    def result(self) -> Weights:
        """The next global model from the updates added so far."""


class CollectedAggregation(Aggregation):
    def __init__(self, plan: ComputePlan, round: int, global_weights: Weights):
        self.plan, self.round, self.global_weights = plan, round, global_weights
        self.updates: dict[str, Update] = {}

    def add(self, site: str, update: Update) -> None:
        what = f"update from site {site!r}"
        if site in self.updates:
            raise UpdateRejected(f"{what}: a second update from the same site in one round")
        check_weights(update.weights, self.global_weights, what)
        self.updates[site] = update

    def result(self) -> Weights:
        return self.plan.aggregate_train(self.round, self.global_weights, self.updates)


def site_config(seed: int, round: int, site: str, local_epochs: int | None, local_steps: int | None,
                extra: dict[str, Any] | None = None, *, rounds: int) -> RoundConfig:
    """One site's instructions for ``round``, with a seed that depends only on (seed, round, site);
    ``rounds`` is the plan's ``total_rounds``, sent as ``extra["run_rounds"]`` (the run's length, over
    which ``[training] lr_schedule`` runs: ``training.schedules``)."""
    return RoundConfig(round=round, seed=stable_seed(seed, "train", round, site), local_epochs=local_epochs,
                       local_steps=local_steps, extra={**(extra or {}), "run_rounds": rounds})
