"""How a site trains: the ``[training]`` options, checked without importing torch.

Reading an experiment file must not start torch (seconds, and not every coordinator has it loaded),
so this module holds the option names that ``losses`` and ``trainer`` use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fedseg.tables import check_range

LOSSES = ("dice", "dice_ce", "bce")
OPTIMIZERS = ("adam",)
OPTIMIZER_STATES = ("reset", "keep")
LR_SCHEDULES = ("constant", "step", "cosine", "poly")
SCHEDULE_OPTIONS = {"step_milestones": ("step", ()), "step_gamma": ("step", 0.1), "poly_exponent": ("poly", 0.9)}
"""Options of one schedule shape and their defaults: another value with another shape is an error."""
MAX_MILESTONES = 100
DEVICE = re.compile(r"auto|cpu|cuda|cuda:[0-9]{1,3}")
"""Devices a site trains on: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (placement: ``training/devices.py``)."""


@dataclass(frozen=True)
class TrainingConfig:
    """Local optimisation; ``batch_size`` counts cases, each giving ``patches_per_case`` patches."""

    loss: str = "dice_ce"
    optimizer: str = "adam"
    lr: float = 2e-4
    weight_decay: float = 0.0
    batch_size: int = 4
    local_epochs: int = 1
    local_steps: int | None = None
    sw_batch_size: int = 4
    sw_overlap: float = 0.25
    validate_local: bool = True
    """Score the locally trained model on the site's validation cases (``val_dice`` in the update)."""
    optimizer_state: str = "reset"
    """``reset``: a fresh Adam every round; ``keep``: each site keeps its Adam moments across rounds."""
    device: str = "auto"
    """``auto``: a GPU when the site has one, else the CPU; ``cpu``; ``cuda`` (a GPU, refused without
    one); ``cuda:N``. The site resolves it (``training/devices.py``); the run's file keeps what it said."""
    amp: bool = False
    """Automatic mixed precision (float16 autocast, gradient scaling) on CUDA; ignored on the CPU."""
    lr_schedule: str = "constant"
    """The lr over the whole run (``training/schedules.py``): constant | step | cosine | poly."""
    warmup: float = 0.0
    """Share of the run over which the lr rises linearly from 0 to ``lr``; the shape runs over the rest."""
    lr_min: float = 0.0
    """The lr that step, cosine and poly decay towards (at most ``lr``)."""
    step_milestones: tuple[float, ...] = ()
    """``step``: shares of the whole run (after the warm-up) at which the lr is multiplied by ``step_gamma``."""
    step_gamma: float = 0.1
    poly_exponent: float = 0.9
    """``poly`` (nnU-Net): ``lr * (1 - progress) ** poly_exponent``."""

    def __post_init__(self) -> None:
        for name, choices in (("loss", LOSSES), ("optimizer", OPTIMIZERS), ("optimizer_state", OPTIMIZER_STATES),
                              ("lr_schedule", LR_SCHEDULES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"training.{name} must be one of {choices}, got {getattr(self, name)!r}")
        if not (isinstance(self.device, str) and DEVICE.fullmatch(self.device)):
            raise ValueError(f"training.device must be 'cpu', 'cuda' or 'cuda:N' (N the GPU's index, e.g. "
                             f"'cuda:0'), or 'auto' (a GPU when there is one), got {self.device!r:.40}")
        if not isinstance(self.amp, bool):
            raise ValueError(f"training.amp must be true or false, got {self.amp!r:.40}")
        if self.amp and self.device == "cpu":
            raise ValueError("training.amp = true needs a GPU, but training.device = 'cpu': set device = 'auto' "
                             "(mixed precision where a site has a GPU) or remove amp")
        check_range("training.lr", self.lr, 0, above=True)
        check_range("training.weight_decay", self.weight_decay, 0)
        check_range("training.sw_overlap", self.sw_overlap, 0, 1, below=True)
        for name in ("batch_size", "local_epochs", "sw_batch_size"):
            check_range(f"training.{name}", getattr(self, name), 1)
        if self.local_steps is not None:
            check_range("training.local_steps", self.local_steps, 1)
        self._check_schedule()

    def _check_schedule(self) -> None:
        check_range("training.warmup", self.warmup, 0, 1, below=True)
        check_range("training.lr_min", self.lr_min, 0, self.lr)
        check_range("training.step_gamma", self.step_gamma, 0, 1, above=True)
        check_range("training.poly_exponent", self.poly_exponent, 0, 100, above=True)
        milestones = self.step_milestones
        if len(milestones) > MAX_MILESTONES:
            raise ValueError(f"training.step_milestones holds {len(milestones)} values; at most {MAX_MILESTONES}")
        for i, milestone in enumerate(milestones):
            check_range(f"training.step_milestones[{i}]", milestone, 0, 1, above=True, below=True)
        if any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"training.step_milestones must increase, got {list(milestones)}")
        if milestones and milestones[0] <= self.warmup:
            raise ValueError(f"training.step_milestones[0] = {milestones[0]!r} falls in the warm-up (warmup = "
                             f"{self.warmup!r}): the lr drops after it")
        for name, (shape, default) in SCHEDULE_OPTIONS.items():
            value = getattr(self, name)
            if (tuple(value) if isinstance(value, list) else value) != default and self.lr_schedule != shape:
                raise ValueError(f"training.{name} = {value!r:.60} applies to lr_schedule = "
                                 f"{shape!r} only, got lr_schedule = {self.lr_schedule!r}: remove it or set the shape")
        if self.lr_schedule == "step" and not milestones:
            raise ValueError("training.lr_schedule = 'step' needs step_milestones, the shares of the run at which "
                             "the lr drops, e.g. step_milestones = [0.5, 0.75]")
        if self.lr_schedule == "constant" and self.lr_min != 0:
            raise ValueError(f"training.lr_min = {self.lr_min!r} applies to a decaying lr_schedule (step, cosine, "
                             "poly), got lr_schedule = 'constant'")
