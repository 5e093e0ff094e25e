"""Per-case segmentation metrics on label maps, using MONAI's metric code."""

from __future__ import annotations

import torch
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot


def dice_per_class(prediction: torch.Tensor, truth: torch.Tensor, n_classes: int) -> list[float]:
    """Dice of each foreground class for one case (``[1, *spatial]`` label maps).

    A class absent from both truth and prediction scores 1 (nothing to find, nothing found);
    absent from the truth but predicted scores 0.
    """
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    pred = one_hot(prediction[None].long(), n_classes)
    true = one_hot(truth[None].long(), n_classes)
    return [float(v) for v in metric(pred, true)[0]]
