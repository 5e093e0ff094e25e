"""Plain data exchanged between sites, compute plans and runtimes.

Kept free of torch so that compute plans stay pure numpy code and the same objects can travel
over any transport: only weights and scalar metrics ever leave a site.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Weights = dict[str, np.ndarray]
"""A model's parameters by name, as numpy arrays (the state dict of the network)."""
Model = Weights | list[Weights]
"""One model's weights, or an ensemble's members."""
CONTROL_PREFIX = "scaffold_control/"
"""Reserved key prefix: SCAFFOLD's control variates travel beside a model's weights under it."""


@dataclass(frozen=True)
class RoundConfig:
    """What a compute plan asks one site to do in one round."""

    round: int
    seed: int
    local_epochs: int | None = None
    local_steps: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Update:
    """What a site sends back after local training: weights, how much data, scalar metrics."""

    weights: Weights
    n_samples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class CaseMetrics:
    """Segmentation quality of one test case, per foreground class name."""

    case: str
    dice: dict[str, float]
    hd95: dict[str, float] = field(default_factory=dict)
    """95th-percentile Hausdorff distance in mm (inf when one side is empty, nan when both are)."""
    bbox_coverage: dict[str, float] = field(default_factory=dict)
    """Fraction of the true structure inside the bounding box of the prediction (Parekh et al.)."""
    failed: list[str] = field(default_factory=list)
    """Classes present in the truth that the prediction misses entirely."""

    @property
    def mean_dice(self) -> float:
        values = [v for v in self.dice.values() if not np.isnan(v)]
        return float(np.mean(values)) if values else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {"case": self.case, "dice": self.dice, "mean_dice": self.mean_dice, "hd95": self.hd95,
                "bbox_coverage": self.bbox_coverage, "failed": self.failed}


def mean_dice(cases: list[CaseMetrics]) -> float:
    """Mean over cases of each case's mean foreground Dice (cases without a value are left out)."""
    values = [c.mean_dice for c in cases if not np.isnan(c.mean_dice)]
    return float(np.mean(values)) if values else float("nan")
