"""Test-set results of one model on every site: per case, per site, and over all test cases."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedseg.types import CaseMetrics


def summarise_model(model: str, per_site: Mapping[str, list[CaseMetrics]]) -> dict[str, Any]:
    """``results.json`` content for ``model``: test metrics per case, per site and overall."""
    everything = [case for cases in per_site.values() for case in cases]
    return {
        "model": model,
        "sites": {site: {**summarise(cases), "cases": [c.as_dict() for c in cases]}
                  for site, cases in per_site.items()},
        "overall": summarise(everything),
    }


def summarise(cases: list[CaseMetrics]) -> dict[str, Any]:
    """Mean and sample standard deviation (as in the cross-site matrix) of mean Dice, and mean Dice
    per class, over ``cases``."""
    means = np.array([c.mean_dice for c in cases], dtype=float)
    classes = list(cases[0].dice) if cases else []
    return {
        "n_cases": len(cases),
        "mean_dice": _nanstat(np.nanmean, means),
        "sd_dice": _nanstat(lambda v: np.nanstd(v, ddof=1), means) if np.isfinite(means).sum() > 1 else None,
        "dice_per_class": {k: _nanstat(np.nanmean, np.array([c.dice[k] for c in cases])) for k in classes},
    }


def _nanstat(function, values: np.ndarray) -> float | None:
    if values.size == 0 or np.isnan(values).all():
        return None
    return float(function(values))
