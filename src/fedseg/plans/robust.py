"""How the averaging plans combine a round's updates: ``[plan] aggregator``.

- ``"mean"`` (default): the weighted mean, folded in one update at a time as updates arrive
  (``averaging.StreamingMean``): the coordinator holds about two models whatever the number of sites.
- ``"median"``: the coordinate-wise median of the updates, unweighted (Yin et al. 2018,
  "Byzantine-robust distributed learning: towards optimal statistical rates").
- ``"trimmed_mean"``: per coordinate, the ``floor(trim * n)`` smallest and largest of the ``n``
  values are dropped and the rest averaged, unweighted (Yin et al. 2018); ``trim`` in (0, 0.5).
- ``"clipped_mean"``: each update's difference from the global model is scaled down to at most
  ``clip_factor`` times the round's median difference norm, then the usual weighted mean (Sun et
  al. 2019, "Can you really backdoor federated learning?", with the bound set per round).

**Memory.** Every aggregator but ``"mean"`` needs all of a round's updates at once: the
coordinator holds one model per answering site (and, while combining, one parameter stacked over
the sites). Sites are combined in sorted order, so the result does not depend on arrival order.

Norms are Euclidean over the floating-point parameters. Integer buffers (``num_batches_tracked``)
go through the same rule as floats (median, trimmed mean or weighted mean; never clipped) and are
then rounded to the nearest integer. FedOpt plans take their server step from the combination.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedseg.plans.averaging import Combiner, StreamingMean
from fedseg.types import Weights

AGGREGATORS = ("mean", "median", "trimmed_mean", "clipped_mean")
DEFAULTS = {"trim": 0.2, "clip_factor": 2.0}


@dataclass(frozen=True)
class Aggregator:
    name: str = "mean"
    trim: float | None = None
    """trimmed_mean: share of the values dropped at each end of every coordinate (default 0.2)."""
    clip_factor: float | None = None
    """clipped_mean: bound on each update's distance from the global model, in round medians (default 2)."""

    def __post_init__(self) -> None:
        if self.name not in AGGREGATORS:
            raise ValueError(f"plan.aggregator must be one of {AGGREGATORS}, got {self.name!r}")
        for key, owner in (("trim", "trimmed_mean"), ("clip_factor", "clipped_mean")):
            if getattr(self, key) is not None and self.name != owner:
                raise ValueError(f"plan.{key} applies only to aggregator = '{owner}', not '{self.name}'")
            if self.name == owner and getattr(self, key) is None:
                object.__setattr__(self, key, DEFAULTS[key])
        if self.trim is not None and not 0 < self.trim < 0.5:
            raise ValueError(f"plan.trim must be in (0, 0.5), got {self.trim}")
        if self.clip_factor is not None and not (math.isfinite(self.clip_factor) and self.clip_factor > 0):
            raise ValueError(f"plan.clip_factor must be a finite number > 0, got {self.clip_factor}")

    @property
    def weighted(self) -> bool:
        """Whether the sites' averaging weights matter (median and trimmed mean count each site once)."""
        return self.name in ("mean", "clipped_mean")

    def check_sites(self, per_round: int) -> None:
        """A trimmed mean that would drop nothing with ``per_round`` sites is a configuration error."""
        if self.name == "trimmed_mean" and int(self.trim * per_round) < 1:
            raise ValueError(f"plan.trim = {self.trim} drops no site with {per_round} site(s) per round (it drops "
                             f"floor(trim x sites) at each end); use trim >= {1 / per_round:.3g} (below 0.5) "
                             "or aggregator = 'median'")

    def combiner(self, template: Weights) -> Combiner:
        if self.name == "mean":
            return StreamingMean(template)
        if self.name == "median":
            return CoordinateMedian(template)
        if self.name == "trimmed_mean":
            return TrimmedMean(template, self.trim)
        return ClippedMean(template, self.clip_factor)


def distance(weights: Weights, reference: Weights) -> float:
    """Euclidean distance between two models over ``reference``'s floating-point parameters."""
    total = 0.0
    for key, ref in reference.items():
        if np.issubdtype(ref.dtype, np.floating):
            total += float(np.sum((np.asarray(weights[key], np.float64) - np.asarray(ref, np.float64)) ** 2))
    return math.sqrt(total)


def shrink(weights: Weights, reference: Weights, scale: float) -> Weights:
    """``weights`` moved toward ``reference`` to ``scale`` of their distance (float parameters only),
    in each parameter's dtype: how an update is clipped to a norm bound (``scale`` > 1 moves it away)."""
    out = {}
    for key, value in weights.items():
        if np.issubdtype(value.dtype, np.floating):
            start = np.asarray(reference[key], np.float64)
            value = np.asarray(start + scale * (np.asarray(value, np.float64) - start)).astype(value.dtype)  # 0-d stays an array
        out[key] = value
    return out


class Collected(Combiner):
    """Keeps every checked update of the round until ``combine``."""

    def __init__(self, template: Weights):
        super().__init__(template)
        self.updates: dict[str, Weights] = {}

    def _keep(self, site: str, weights: Weights, weight: float) -> None:
        self.updates[site] = weights

    def sites(self) -> list[str]:
        if not self.updates:
            raise ValueError("nothing to aggregate: no update was accepted this round")
        return sorted(self.updates)

    def stacked(self, key: str, sites: list[str]) -> np.ndarray:
        """Parameter ``key`` of every site, in float64, stacked along a new first axis."""
        return np.stack([np.asarray(self.updates[site][key], dtype=np.float64) for site in sites])


class CoordinateMedian(Collected):
    def combine(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        sites = self.sites()
        values = {key: np.median(self.stacked(key, sites), axis=0) for key in self.template}
        return values, {"aggregator": "median", "aggregation_weights": self.normalised(dict.fromkeys(sites, 1.0))}


class TrimmedMean(Collected):
    def __init__(self, template: Weights, trim: float):
        super().__init__(template)
        self.trim = trim

    def combine(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        sites = self.sites()
        n = len(sites)
        cut = int(self.trim * n)  # as scipy.stats.trim_mean; trim < 0.5 leaves at least one value
        values, dropped, coordinates = {}, np.zeros(n), 0
        for key in self.template:
            stack = self.stacked(key, sites)
            order = np.argsort(stack, axis=0, kind="stable")
            values[key] = np.take_along_axis(stack, order[cut:n - cut], axis=0).mean(axis=0)
            if cut:
                dropped += np.bincount(np.concatenate([order[:cut], order[n - cut:]]).ravel(), minlength=n)
            coordinates += stack[0].size
        share = {site: float(dropped[i] / max(coordinates, 1)) for i, site in enumerate(sites)}
        return values, {"aggregator": "trimmed_mean", "aggregation_weights": self.normalised(dict.fromkeys(sites, 1.0)),
                        "trimmed_per_end": cut, "trimmed_share": share}


class ClippedMean(Collected):
    def __init__(self, template: Weights, clip_factor: float):
        super().__init__(template)
        self.clip_factor = clip_factor

    def combine(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        sites = self.sites()
        shares = self.normalised()  # raises when no update has a positive weight
        norms = {site: distance(self.updates[site], self.template) for site in sites}
        bound = self.clip_factor * float(np.median(list(norms.values())))
        scales = {site: bound / norm if norm > bound else 1.0 for site, norm in norms.items()}
        total = sum(self.weights.values())
        values = {}
        for key, reference in self.template.items():
            g = np.asarray(reference, dtype=np.float64)
            acc = np.zeros(g.shape, dtype=np.float64)
            for site in sites:
                u = np.asarray(self.updates[site][key], dtype=np.float64)
                if scales[site] < 1 and np.issubdtype(reference.dtype, np.floating):
                    u = g + scales[site] * (u - g)
                acc += self.weights[site] * u
            values[key] = acc / total
        return values, {"aggregator": "clipped_mean", "aggregation_weights": shares, "norms": norms,
                        "clip_bound": bound, "clipped": [site for site in sites if scales[site] < 1]}
