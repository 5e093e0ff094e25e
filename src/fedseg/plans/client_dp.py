"""Client-level differential privacy: DP-FedAvg (McMahan et al. 2018, "Learning differentially
private recurrent language models").

Each site's change to the global model is clipped to L2 norm ``clip`` (by the coordinator when it
sees the updates, by each site itself under a secure sum), every site counts equally, and the
coordinator adds Gaussian noise of standard deviation ``noise_multiplier * clip / m`` to the mean
of the ``m`` changes it received. One site's whole contribution is then hidden: the unit of
privacy is a site, and the budget ``(epsilon, delta)`` is the federation's over all its rounds.

The noise multiplier is chosen before the first round for the run's budget (``rounds`` rounds,
each with a fraction ``sample_rate`` of the sites; with fixed-size site sampling the Poisson
analysis of the accountant is the usual approximation, exact when every site trains every round).
The noise comes from a secret seed the coordinator draws once and keeps in the plan's state (its
checkpoint), the round and a digest of the mean it covers: a resumed run adds the same noise to the
same mean (nothing new is released), nobody who only knows the experiment's seed can take the noise
out again, and a round released twice with different means (a resume after the new model reached
the sites, with other sites answering) gets fresh noise: the same noise on both would give away
their difference, e.g. one site's clipped update.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from typing import Any, Protocol

import numpy as np

from fedseg.plans.robust import distance, shrink
from fedseg.types import Weights


class Accounting(Protocol):
    """The privacy accountant (``fedseg.privacy.accounting``; given by the layer that builds the plan,
    as plans stay pure numpy)."""

    def noise_multiplier(self, epsilon: float, delta: float, sample_rate: float, steps: int,
                         accountant: str) -> float: ...

    def epsilon_spent(self, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                      accountant: str) -> float: ...


class ClientDP:
    def __init__(self, clip: float, epsilon: float, delta: float, sample_rate: float, rounds: int,
                 accounting: Accounting, accountant: str = "rdp"):
        self.clip, self.epsilon, self.delta = clip, epsilon, delta
        self.sample_rate, self.rounds, self.accounting, self.accountant = sample_rate, rounds, accounting, accountant
        self.secret = secrets.randbits(128)
        self._sigma: float | None = None

    @property
    def noise_multiplier(self) -> float:
        """The noise multiplier that spends exactly the budget over the run (computed once)."""
        if self._sigma is None:
            self._sigma = self.accounting.noise_multiplier(self.epsilon, self.delta, self.sample_rate, self.rounds,
                                                           self.accountant)
        return self._sigma

    def spent(self, rounds_done: int) -> float:
        return self.accounting.epsilon_spent(self.noise_multiplier, self.sample_rate, rounds_done, self.delta,
                                             self.accountant)

    def clipped(self, weights: Weights, global_weights: Weights) -> tuple[Weights, bool]:
        """``weights`` moved to within ``clip`` of the global model, and whether it had to move."""
        norm = distance(weights, global_weights)
        if norm <= self.clip:
            return weights, False
        return shrink(weights, global_weights, self.clip / norm), True

    def noised(self, combined: dict[str, np.ndarray], round: int, count: int) -> dict[str, np.ndarray]:
        """The mean of ``count`` clipped updates with the round's Gaussian noise on every float parameter."""
        digest = hashlib.sha256(f"{round} {count}".encode())
        for key, value in sorted(combined.items()):
            digest.update(key.encode() + np.ascontiguousarray(value, np.float64).tobytes())
        rng = np.random.default_rng([self.secret, round, int.from_bytes(digest.digest(), "big")])
        std = self.noise_multiplier * self.clip / max(count, 1)
        return {key: value + rng.normal(0.0, std, np.shape(value)) if np.issubdtype(np.asarray(value).dtype,
                                                                                    np.floating) else value
                for key, value in sorted(combined.items())}

    def summary(self, round: int) -> dict[str, Any]:
        spent = self.spent(round + 1)
        return {"client_dp": {"epsilon": spent if math.isfinite(spent) else None, "delta": self.delta,
                              "noise_multiplier": self.noise_multiplier, "clip": self.clip}}
