"""Privacy accounting of DP-SGD: the epsilon a run of the sampled Gaussian mechanism spends, and the
noise multiplier that makes a whole run spend a target epsilon.

Both use Opacus's accountants (imported when called, so that reading an experiment does not load
torch): ``rdp``, Renyi DP of the Poisson-subsampled Gaussian (Mironov 2017; Mironov, Talwar, Zhang
2019) converted to (epsilon, delta) as Opacus does, and ``prv``, the numerical composition of
privacy loss random variables (Gopi, Lee, Wutschitz 2021), whose epsilon is an upper bound within
Opacus's default error (0.01). ``tests/test_accounting.py`` checks both against Opacus's published
values and Google's ``dp_accounting`` (RDP and PLD).

A run here is ``steps`` steps with one noise multiplier and one sampling rate ``q``: each unit
(case) is in each step's batch independently with probability ``q`` (Poisson sampling).
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

ACCOUNTANTS = ("rdp", "prv")
MAX_NOISE = 1e6
"""Largest noise multiplier searched: a target that needs more is refused (it would train on noise)."""
MIN_NOISE = 1e-3
TOLERANCE = 0.01
"""The chosen noise multiplier spends between (1 - TOLERANCE) x epsilon and epsilon."""


def epsilon_spent(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                  accountant: str = "rdp") -> float:
    """The epsilon (at ``delta``) of ``steps`` Poisson-sampled Gaussian steps with rate ``sample_rate``."""
    _check_run(sample_rate, steps, delta, accountant)
    if not (_number(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"the noise multiplier must be a positive number, got {noise_multiplier!r:.40}")
    return _epsilon(float(noise_multiplier), float(sample_rate), int(steps), float(delta), accountant)


def noise_multiplier(epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp") -> float:
    """The smallest noise multiplier (to the bisection's precision) whose run spends at most
    ``epsilon`` at ``delta``; it spends at least ``(1 - TOLERANCE) * epsilon``.

    ValueError for a target out of range or one no noise multiplier in [MIN_NOISE, MAX_NOISE] meets.
    """
    if not (_number(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be a positive number, got {epsilon!r:.40}")
    _check_run(sample_rate, steps, delta, accountant)
    epsilon, delta, sample_rate, steps = float(epsilon), float(delta), float(sample_rate), int(steps)

    def spent(sigma: float) -> float:
        return _epsilon(sigma, sample_rate, steps, delta, accountant)

    high = 1.0
    spent_high = spent(high)
    while spent_high > epsilon:
        high *= 2
        if high > MAX_NOISE:
            raise ValueError(f"epsilon = {epsilon:g} at delta = {delta:g} cannot be reached in {steps} steps at "
                             f"sampling rate {sample_rate:g}, even with noise multiplier {MAX_NOISE:g}: raise "
                             "epsilon, or train fewer rounds or epochs")
        spent_high = spent(high)
    low = high / 2
    while (spent_low := spent(low)) <= epsilon:
        high, spent_high = low, spent_low
        low /= 2
        if low < MIN_NOISE:
            raise ValueError(f"epsilon = {epsilon:g} is spent by less noise than multiplier {MIN_NOISE:g} "
                             f"({steps} steps at sampling rate {sample_rate:g}): it protects nothing; choose a "
                             "smaller epsilon (DP-SGD is typically run at epsilon 1 to 10)")
    # spent(low) > epsilon >= spent(high): bisect until spent(high) is within the tolerance
    while spent_high < (1 - TOLERANCE / 2) * epsilon and high - low > 1e-9 * high:
        middle = (low + high) / 2
        spent_middle = spent(middle)
        if spent_middle <= epsilon:
            high, spent_high = middle, spent_middle
        else:
            low = middle
    return high


def _epsilon(sigma: float, sample_rate: float, steps: int, delta: float, accountant: str) -> float:
    """Opacus's epsilon; a numerical failure (very small noise) counts as an unbounded epsilon."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    counter = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    counter.history = [(sigma, sample_rate, steps)]
    try:
        with warnings.catch_warnings(), np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            warnings.simplefilter("ignore")  # "optimal order is the largest alpha", log(0) inside PRV's grid
            value = float(counter.get_epsilon(delta=delta))
    except (ValueError, OverflowError, FloatingPointError, ZeroDivisionError, RuntimeError):
        return math.inf
    return value if not math.isnan(value) else math.inf


def _check_run(sample_rate: float, steps: int, delta: float, accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"the accountant must be one of {ACCOUNTANTS}, got {accountant!r:.40}")
    if not (_number(delta) and 0 < delta < 1):
        raise ValueError(f"delta must be a number in (0, 1), e.g. 1e-5, got {delta!r:.40}")
    if not (_number(sample_rate) and 0 < sample_rate <= 1):
        raise ValueError(f"the sampling rate must be a number in (0, 1] (batch size / training cases), "
                         f"got {sample_rate!r:.40}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"the number of steps must be a whole number >= 1, got {steps!r:.40}")


def _number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
