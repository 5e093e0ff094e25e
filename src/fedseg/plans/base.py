"""The compute-plan contract shared by the simulation and deployment runtimes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from fedseg.types import RoundConfig, Update, Weights


class ComputePlan(ABC):
    """A handful of hooks, like Flower's Strategy: the runtime calls them, the plan decides.

    Plans must be deterministic given their constructor arguments and ``state_dict``, so a
    run resumed from a checkpoint continues exactly where it stopped.
    """

    name: str = "plan"

    @abstractmethod
    def configure_train(self, round: int, sites: Sequence[str]) -> dict[str, RoundConfig]:
        """Which of the available ``sites`` train in ``round`` (0-based), and how."""

    @abstractmethod
    def aggregate_train(self, round: int, global_weights: Weights, updates: Mapping[str, Update]) -> Weights:
        """The next global model from this round's updates."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state to checkpoint after each round (empty for stateless plans)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
