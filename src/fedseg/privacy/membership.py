"""Empirical privacy: the loss-threshold membership-inference attack (Yeom et al. 2018, "Privacy
risk in machine learning: analyzing the connection to overfitting").

The attacker guesses "member" when a case's loss under the model is below a threshold. Over all
thresholds, its success is the ROC AUC of the losses as a score: the probability that a random
training case (member) has a lower loss than a random held-out case (non-member), ties counting
one half. 0.5 is a coin toss, 1.0 tells every member apart. The AUC equals the Mann-Whitney U
statistic of the two groups divided by the number of pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def attack_auc(member_losses: Sequence[float], nonmember_losses: Sequence[float]) -> float:
    """ROC AUC of the loss-threshold attack (lower loss => member), in [0, 1]."""
    members = _losses(member_losses, "member")
    nonmembers = _losses(nonmember_losses, "non-member")
    from scipy.stats import mannwhitneyu

    # U counts the pairs where the non-member's loss exceeds the member's (ties one half)
    u = mannwhitneyu(nonmembers, members, alternative="two-sided", method="asymptotic").statistic
    return float(u) / (len(members) * len(nonmembers))


def _losses(values: Sequence[float], what: str) -> np.ndarray:
    array = np.asarray(list(values), dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"the attack needs at least one {what} loss, got {array.size}")
    if not np.all(np.isfinite(array)):
        bad = next(v for v in array if not math.isfinite(v))
        raise ValueError(f"{what} losses must be finite numbers, got {bad}")
    return array
