"""Learning-rate schedules over a whole run (``[training] lr_schedule``), without torch.

The lr of a local optimizer step is a pure function of where the step lies in the run::

    progress = (round + step / steps) / run_rounds      step = 0 .. steps - 1 of the round's steps

    lr(p) = lr * p / warmup                           p < warmup
          = lr_min + (lr - lr_min) * shape            otherwise, with q = (p - warmup) / (1 - warmup)

    constant: 1        cosine: (1 + cos(pi q)) / 2 (Loshchilov & Hutter 2017)
    poly: (1 - q) ** poly_exponent (nnU-Net)     step: step_gamma ** (number of step_milestones <= p)

(step's milestones are shares of the whole run, all after the warm-up: "drop at half the run" is
0.5 whatever the warm-up).

``run_rounds`` is the plan's ``total_rounds``, sent in ``RoundConfig.extra`` (``plans.base.site_config``)
and checked here like any value from the coordinator. The round number is in every checkpoint, so a
resumed run retraces an uninterrupted one bit for bit; the lr is set before every step, so a restored
optimizer state (``optimizer_state = "keep"``) never decides it. ``steps`` is the round's number of
optimizer steps (DP-SGD's Poisson batches: its fixed number of steps, of random sizes). The
comparison arms (standalone, centralized) run as many rounds as an averaging plan, so they step
through the same lrs as its sites. A cyclic plan's run is cycles x sites rounds and a site trains in
its turns only, at the lrs of those turns; a standalone model trains in each of its cycles rounds.

Fine-tuning (FL_local) is a run of its own: one round of ``fine_tune_epochs`` epochs with a fresh
optimizer, over which the same shape runs from the base ``lr`` (warm-up included). A fine-tune
that started from where the run ended would, with cosine or poly, hardly move (their lr ends near
``lr_min``); starting from the base lr and decaying again gives FL_local the same settling at the end
that FL_global had, and it depends on no state of the federation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

from fedseg.errors import UserError
from fedseg.training.config import TrainingConfig
from fedseg.types import RoundConfig

MAX_RUN_ROUNDS = 10_000_000
"""More rounds than any run has: a larger ``run_rounds`` is a broken or hostile coordinator."""


def varies(training: TrainingConfig) -> bool:
    """Whether the lr changes over the run (else every step uses ``training.lr``, as before schedules)."""
    return training.lr_schedule != "constant" or training.warmup > 0


def lr_at(training: TrainingConfig, progress: float) -> float:
    """The lr at ``progress`` (0 at the run's first step, towards 1 at its end; clamped to [0, 1])."""
    p = min(1.0, max(0.0, float(progress)))
    lr, warmup = training.lr, training.warmup
    if p < warmup:
        return lr * p / warmup
    if training.lr_schedule == "constant":
        return lr
    q = (p - warmup) / (1 - warmup)
    if training.lr_schedule == "step":
        factor = training.step_gamma ** sum(1 for m in training.step_milestones if m <= p)
    elif training.lr_schedule == "cosine":
        factor = (1 + math.cos(math.pi * q)) / 2
    else:
        factor = (1 - q) ** training.poly_exponent
    return training.lr_min + (lr - training.lr_min) * factor


def run_rounds(training: TrainingConfig, config: RoundConfig, site: str) -> int | None:
    """The run's length from the round's instructions, checked; None where it is absent and the lr
    does not vary (instructions from a coordinator that predates schedules)."""
    value: Any = config.extra.get("run_rounds")
    round = config.round
    if value is None and not varies(training):
        return None
    if value is None:
        raise UserError(f"site {site}: the round's instructions do not say how many rounds the run has "
                        f"(run_rounds), which training.lr_schedule = {training.lr_schedule!r} with warmup = "
                        f"{training.warmup:g} needs: run the coordinator with the same fedseg version as the site")
    if isinstance(round, bool) or not isinstance(round, int) or not 0 <= round < MAX_RUN_ROUNDS:
        raise UserError(f"site {site}: the round number must be a whole number in [0, {MAX_RUN_ROUNDS}), "
                        f"got {round!r:.40}")
    if isinstance(value, bool) or not isinstance(value, int) or not round < value <= MAX_RUN_ROUNDS:
        raise UserError(f"site {site}: the round's run_rounds (the run's length) must be a whole number from "
                        f"{round + 1} (round {round} is part of the run) to {MAX_RUN_ROUNDS}, got {value!r:.40}")
    return value


class RoundLR:
    """The lr of each of one round's ``steps`` local steps, set on an optimizer before each step."""

    def __init__(self, training: TrainingConfig, config: RoundConfig, steps: int, site: str):
        self.training, self.steps = training, steps
        self.round, self.rounds = config.round, run_rounds(training, config, site)
        self.last: float | None = None

    def at(self, step: int) -> float:
        if self.rounds is None:
            return self.training.lr
        return lr_at(self.training, (self.round + step / self.steps) / self.rounds)

    def set(self, optimizer: Any, step: int) -> None:
        """Step ``step``'s lr into every parameter group of ``optimizer`` (a torch optimizer)."""
        self.last = self.at(step)
        for group in optimizer.param_groups:
            group["lr"] = self.last

    def over(self, optimizer: Any, batches: Iterable) -> Iterator:
        """``batches``, each yielded after its step's lr is set on ``optimizer``."""
        for step, batch in enumerate(batches):
            self.set(optimizer, step)
            yield batch

    def metrics(self) -> dict[str, float]:
        """``lr_last``: the lr of the round's last step (none without a step)."""
        return {} if self.last is None else {"lr_last": self.last}
