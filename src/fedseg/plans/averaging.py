"""Weighted averaging of weight dictionaries, one update at a time.

Accumulating as updates arrive keeps memory at two models whatever the number of sites.
"""

from __future__ import annotations

import numpy as np

from fedseg.types import Weights


class RunningAverage:
    """Sum of ``weight * update`` in float64, divided by the total weight at the end."""

    def __init__(self) -> None:
        self._sum: dict[str, np.ndarray] = {}
        self._dtypes: dict[str, np.dtype] = {}
        self.total = 0.0

    def add(self, weights: Weights, weight: float) -> None:
        if weight < 0 or not np.isfinite(weight):
            raise ValueError(f"averaging weight must be finite and >= 0, got {weight}")
        if self._sum and weights.keys() != self._sum.keys():
            raise ValueError("updates disagree on parameter names; do all sites use the same model config?")
        for key, value in weights.items():
            value = np.asarray(value)
            if key not in self._sum:
                self._sum[key] = np.zeros(value.shape, dtype=np.float64)
                self._dtypes[key] = value.dtype
            elif self._sum[key].shape != value.shape:
                raise ValueError(f"parameter '{key}' has shape {value.shape}, expected {self._sum[key].shape}")
            self._sum[key] += weight * value
        self.total += weight

    def means(self) -> dict[str, np.ndarray]:
        """The averages in float64, before casting back to each parameter's dtype."""
        if not self._sum or self.total <= 0:
            raise ValueError("nothing to average: no update with a positive weight")
        return {key: value / self.total for key, value in self._sum.items()}

    def result(self, means: dict[str, np.ndarray] | None = None) -> Weights:
        """The averages in each parameter's dtype (integers rounded); ``means`` if already computed."""
        out = {}
        for key, mean in (self.means() if means is None else means).items():
            dtype = self._dtypes[key]
            out[key] = (np.rint(mean) if np.issubdtype(dtype, np.integer) else mean).astype(dtype)
        return out

