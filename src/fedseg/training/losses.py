"""Segmentation losses by name, and how each loss's network output becomes a label map.

``dice`` and ``dice_ce`` use a softmax over one channel per class (background included);
``bce`` uses one sigmoid channel per foreground class (multi-label), as binary papers do.
"""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from fedseg.training.config import LOSSES


def output_channels(loss: str, n_classes: int) -> int:
    return n_classes - 1 if loss == "bce" else n_classes


def build_loss(loss: str, n_classes: int, annotated: list[int] | None = None) -> nn.Module:
    """The loss; with ``annotated`` (a site labelling only some classes) a partial-label loss."""
    if annotated is not None and len(annotated) < n_classes:
        return _ForegroundBCE(n_classes, annotated) if loss == "bce" else _MarginalLoss(loss, n_classes, annotated)
    if loss == "dice":
        return DiceLoss(to_onehot_y=True, softmax=True)
    if loss == "dice_ce":
        return DiceCELoss(to_onehot_y=True, softmax=True)
    if loss == "bce":
        return _ForegroundBCE(n_classes)
    raise ValueError(f"training.loss must be one of {LOSSES}, got '{loss}'")


def logits_to_probabilities(logits: torch.Tensor, loss: str) -> torch.Tensor:
    """Softmax over classes, or a sigmoid per foreground channel for ``bce``."""
    return torch.sigmoid(logits) if loss == "bce" else torch.softmax(logits, dim=1)


def probabilities_to_labels(probabilities: torch.Tensor, loss: str) -> torch.Tensor:
    """Class index map ``[B, 1, *spatial]`` from (possibly ensemble-averaged) probabilities."""
    if loss != "bce":
        return probabilities.argmax(dim=1, keepdim=True)
    best = probabilities.max(dim=1, keepdim=True)
    return torch.where(best.values > 0.5, best.indices + 1, torch.zeros_like(best.indices))



class _ForegroundBCE(nn.Module):
    """Binary cross-entropy on one-hot foreground channels of an integer label map.

    Channels of classes the site does not annotate are left out: their absence from the label
    says nothing about them.
    """

    def __init__(self, n_classes: int, annotated: list[int] | None = None):
        super().__init__()
        self.n_classes = n_classes
        self.channels = [c - 1 for c in (annotated or range(n_classes)) if c > 0]
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        classes = torch.arange(1, self.n_classes, device=label.device).view(1, -1, *[1] * (label.ndim - 2))
        target = (label == classes).to(logits.dtype)
        return self.bce(logits[:, self.channels], target[:, self.channels])


class _MarginalLoss(nn.Module):
    """Softmax Dice / Dice+CE for a site that annotates only some classes (marginal loss).

    The probabilities of the classes the site does not annotate are added to the background's,
    since in its labels they are hidden in the background (Shi et al. 2021, "Marginal loss and
    exclusion loss for partially supervised multi-organ segmentation"). Predicting such a class
    is therefore never punished.
    """

    def __init__(self, loss: str, n_classes: int, annotated: list[int]):
        super().__init__()
        self.with_ce = loss == "dice_ce"
        self.kept = [c for c in annotated if c > 0]
        self.merged = [c for c in range(n_classes) if c not in annotated]
        position = torch.zeros(n_classes, dtype=torch.long)
        position[self.kept] = torch.arange(1, len(self.kept) + 1)
        self.register_buffer("position", position)
        self.dice = DiceLoss(to_onehot_y=True, softmax=False)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(logits, dim=1)
        background = probabilities[:, [0, *self.merged]].sum(dim=1, keepdim=True)
        merged = torch.cat([background, probabilities[:, self.kept]], dim=1)
        target = self.position[label.long()]
        loss = self.dice(merged, target)
        if self.with_ce:
            loss = loss + nn.functional.nll_loss(torch.log(merged.clamp_min(1e-7)), target[:, 0])
        return loss
