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
DEVICE = re.compile(r"cpu|cuda|cuda:[0-9]{1,3}")
"""Devices a site trains on: ``cpu``, ``cuda`` (the current GPU) or ``cuda:N``."""


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
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name, choices in (("loss", LOSSES), ("optimizer", OPTIMIZERS), ("optimizer_state", OPTIMIZER_STATES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"training.{name} must be one of {choices}, got {getattr(self, name)!r}")
        if not (isinstance(self.device, str) and DEVICE.fullmatch(self.device)):
            raise ValueError(f"training.device must be 'cpu', 'cuda' or 'cuda:N' (N the GPU's index, e.g. "
                             f"'cuda:0'), got {self.device!r:.40}")
        check_range("training.lr", self.lr, 0, above=True)
        check_range("training.weight_decay", self.weight_decay, 0)
        check_range("training.sw_overlap", self.sw_overlap, 0, 1, below=True)
        for name in ("batch_size", "local_epochs", "sw_batch_size"):
            check_range(f"training.{name}", getattr(self, name), 1)
        if self.local_steps is not None:
            check_range("training.local_steps", self.local_steps, 1)
