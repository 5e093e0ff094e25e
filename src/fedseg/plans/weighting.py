"""How much each site's update counts in an average: data size, nothing, or its validation Dice.

``val_dice`` is the metric-weighted averaging of Sarma et al. 2021 (JAMIA, "Federated learning
improves site performance in multicenter deep learning without data sharing"): sites whose
locally trained model validates better get more say. A floor keeps every site in the average, so
a site at Dice 0, or one that reports no usable ``val_dice`` (missing or NaN, e.g. when local
validation is switched off), counts with weight ``metric_floor`` and the total never reaches zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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

    def __call__(self, update: Update) -> float:
        """The unnormalised weight of ``update``."""
        if self.by == "n_samples":
            return float(update.n_samples)
        if self.by == "uniform":
            return 1.0
        dice = float(update.metrics.get("val_dice", math.nan))
        return self.metric_floor if math.isnan(dice) else max(dice, self.metric_floor)
