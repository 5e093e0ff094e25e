"""How much each site's update counts in an average: data size, nothing, or its validation Dice.

``val_dice`` is the metric-weighted averaging of Sarma et al. 2021 (JAMIA, "Federated learning
improves site performance in multicenter deep learning without data sharing"): sites whose
locally trained model validates better get more say. A floor keeps every site in the average, so
a site at Dice 0, or one that reports no usable ``val_dice`` (missing or NaN, e.g. when local
validation is switched off), counts with weight ``metric_floor`` and the total never reaches zero.

What a site reports about itself is checked before it counts: ``n_samples`` must be a whole
number >= 1 and ``val_dice`` a number in [0, 1] (or NaN). Whether ``n_samples`` is plausible for
the site (no more than the training cases it declared) is the coordinator's check (``runtime``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedseg.plans.checks import UpdateRejected
from fedseg.types import Update

WEIGHTINGS = ("n_samples", "uniform", "val_dice")


@dataclass(frozen=True)
class Weighting:
    by: str = "n_samples"
    metric_floor: float = 0.05

    def __post_init__(self) -> None:
        if self.by not in WEIGHTINGS:
            raise ValueError(f"plan.weighted_by must be one of {WEIGHTINGS}, got '{self.by}'")
        if not 0 < self.metric_floor <= 1:
            raise ValueError(f"plan.metric_floor must be in (0, 1], got {self.metric_floor}")

    def __call__(self, update: Update, what: str = "update") -> float:
        """The unnormalised weight of ``update``; ``UpdateRejected`` if what it reports is impossible."""
        n = update.n_samples
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise UpdateRejected(f"{what}: n_samples must be a whole number >= 1, got {n!r}")
        if self.by == "n_samples":
            return float(n)
        if self.by == "uniform":
            return 1.0
        if not isinstance(update.metrics, Mapping):
            raise UpdateRejected(f"{what}: metrics must be a table of numbers")
        dice = update.metrics.get("val_dice", math.nan)
        if isinstance(dice, bool) or not isinstance(dice, (int, float, np.integer, np.floating)):
            raise UpdateRejected(f"{what}: val_dice must be a number, got {type(dice).__name__}")
        dice = float(dice)
        if math.isnan(dice):
            return self.metric_floor
        if not 0 <= dice <= 1:
            raise UpdateRejected(f"{what}: val_dice must be in [0, 1], got {dice}")
        return max(dice, self.metric_floor)
