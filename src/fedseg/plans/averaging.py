"""Weighted averaging of weight dictionaries, one update at a time.

Accumulating as updates arrive keeps memory at about two models whatever the number of sites.
The global model is the template: parameter names, shapes and dtypes come from it, never from
an update, and each update is checked in full (``checks``) before any of it is added, so a
rejected update leaves the sum as it was.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from fedseg.plans.checks import UpdateRejected, check_weight, check_weights
from fedseg.types import Weights


def cast_like(values: dict[str, np.ndarray], template: Weights) -> Weights:
    """float64 ``values`` in the dtypes of ``template``; integer buffers rounded to the nearest integer."""
    out = {}
    for key, value in values.items():
        dtype = template[key].dtype
        out[key] = np.asarray(np.rint(value) if np.issubdtype(dtype, np.integer) else value).astype(dtype)
    return out


class RunningAverage:
    """Sum of ``weight * update`` in float64, divided by the total weight at the end."""

    def __init__(self, template: Weights):
        self.template = template
        self._sum = {key: np.zeros(np.shape(value), dtype=np.float64) for key, value in template.items()}
        self.total = 0.0

    def add(self, weights: Weights, weight: float, what: str = "update") -> None:
        """Fold in ``weights`` with ``weight`` (>= 0); ``UpdateRejected`` and nothing added if
        the update does not match the template or the weight is not a finite number >= 0."""
        weight = check_weight(weight, what)
        check_weights(weights, self.template, what)
        self._fold(weights, weight)

    def _fold(self, weights: Weights, weight: float) -> None:
        """Add an update already checked against the template."""
        for key, value in weights.items():
            self._sum[key] += np.multiply(value, weight, dtype=np.float64)
        self.total += weight

    def means(self) -> dict[str, np.ndarray]:
        """The averages in float64, before casting back to each parameter's dtype."""
        if self.total <= 0:
            raise ValueError("nothing to average: no update with a positive weight")
        return {key: value / self.total for key, value in self._sum.items()}

    def result(self, means: dict[str, np.ndarray] | None = None) -> Weights:
        """The averages in the template's dtypes (integers rounded); ``means`` if already computed."""
        return cast_like(self.means() if means is None else means, self.template)


class Combiner(ABC):
    """Takes one round's checked updates with their averaging weights; gives the combined model in
    float64 and a JSON-serialisable summary of what it did."""

    def __init__(self, template: Weights):
        self.template = template
        self.weights: dict[str, float] = {}
        """The averaging weight of each site added so far."""

    def add(self, site: str, weights: Weights, weight: float, what: str = "update") -> None:
        if site in self.weights:
            raise UpdateRejected(f"{what}: a second update from the same site in one round")
        weight = check_weight(weight, what)
        check_weights(weights, self.template, what)
        self._keep(site, weights, weight)
        self.weights[site] = weight

    @abstractmethod
    def _keep(self, site: str, weights: Weights, weight: float) -> None:
        """Take a checked update."""

    @abstractmethod
    def combine(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The combined parameters in float64 and the round's summary."""

    def normalised(self, weights: dict[str, float] | None = None) -> dict[str, float]:
        weights = self.weights if weights is None else weights
        total = sum(weights.values())
        if total <= 0:
            raise ValueError("nothing to average: no update with a positive weight")
        return {site: w / total for site, w in sorted(weights.items())}


class StreamingMean(Combiner):
    """The weighted mean, folding each update into a running sum and dropping it."""

    def __init__(self, template: Weights):
        super().__init__(template)
        self.average = RunningAverage(template)

    def _keep(self, site: str, weights: Weights, weight: float) -> None:
        self.average._fold(weights, weight)  # checked by Combiner.add

    def combine(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        means = self.average.means()
        return means, {"aggregation_weights": self.normalised()}
