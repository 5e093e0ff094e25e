"""Segmentation losses by name, and how each loss's network output becomes a label map.

``dice`` and ``dice_ce`` use a softmax over one channel per class (background included);
``bce`` uses one sigmoid channel per foreground class (multi-label), as binary papers do.
"""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

LOSSES = ("dice", "dice_ce", "bce")


def output_channels(loss: str, n_classes: int) -> int:
    return n_classes - 1 if loss == "bce" else n_classes


def build_loss(loss: str, n_classes: int) -> nn.Module:
    if loss == "dice":
        return DiceLoss(to_onehot_y=True, softmax=True)
    if loss == "dice_ce":
        return DiceCELoss(to_onehot_y=True, softmax=True)
    if loss == "bce":
        return _ForegroundBCE(n_classes)
    raise ValueError(f"training.loss must be one of {LOSSES}, got '{loss}'")


def logits_to_labels(logits: torch.Tensor, loss: str) -> torch.Tensor:
    """Class index map ``[B, 1, *spatial]`` from network output ``[B, C, *spatial]``."""
    if loss != "bce":
        return logits.argmax(dim=1, keepdim=True)
    probabilities = torch.sigmoid(logits)
    best = probabilities.max(dim=1, keepdim=True)
    return torch.where(best.values > 0.5, best.indices + 1, torch.zeros_like(best.indices))


class _ForegroundBCE(nn.Module):
    """Binary cross-entropy on one-hot foreground channels of an integer label map."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.n_classes = n_classes
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        classes = torch.arange(1, self.n_classes, device=label.device).view(1, -1, *[1] * (label.ndim - 2))
        target = (label == classes).to(logits.dtype)
        return self.bce(logits, target)
