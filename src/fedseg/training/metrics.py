"""Per-case segmentation metrics on label maps, using MONAI's metric code."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from monai.metrics import DiceMetric, compute_hausdorff_distance
from monai.networks.utils import one_hot

from fedseg.types import CaseMetrics


def dice_per_class(prediction: torch.Tensor, truth: torch.Tensor, n_classes: int) -> list[float]:
    """Dice of each foreground class for one case (``[1, *spatial]`` label maps).

    A class absent from both truth and prediction scores 1 (nothing to find, nothing found);
    absent from the truth but predicted scores 0.
    """
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    pred = one_hot(prediction[None].long(), n_classes)
    true = one_hot(truth[None].long(), n_classes)
    return [float(v) for v in metric(pred, true)[0]]


def hd95_per_class(prediction: torch.Tensor, truth: torch.Tensor, n_classes: int,
                   spacing: tuple[float, ...]) -> list[float]:
    """95th-percentile symmetric Hausdorff distance per foreground class, in mm.

    ``inf`` when exactly one of prediction and truth is empty (no distance exists), ``nan``
    when both are (nothing to measure); MONAI's own convention differs, so it is fixed here.
    """
    pred = one_hot(prediction[None].long(), n_classes)
    true = one_hot(truth[None].long(), n_classes)
    with warnings.catch_warnings():  # MONAI warns about empty masks (handled below) and about an
        warnings.simplefilter("ignore", UserWarning)  # argument its own code still passes (1.6)
        warnings.simplefilter("ignore", FutureWarning)
        distances = compute_hausdorff_distance(pred, true, include_background=False, percentile=95,
                                               spacing=list(spacing))[0]
    values = []
    for c in range(1, n_classes):
        has_pred, has_true = bool(pred[0, c].any()), bool(true[0, c].any())
        values.append(float(distances[c - 1]) if has_pred and has_true
                      else float("nan") if not (has_pred or has_true) else float("inf"))
    return values


def bbox_coverage_per_class(prediction: torch.Tensor, truth: torch.Tensor, n_classes: int) -> list[float]:
    """Fraction of each true structure's voxels inside the bounding box of the predicted one.

    Parekh et al.'s localisation measure: 1 when the predicted box encloses the whole organ,
    0 when nothing is predicted; ``nan`` when the class is absent from the truth.
    """
    pred, true = prediction[0].numpy(), truth[0].numpy()
    values = []
    for c in range(1, n_classes):
        in_truth = true == c
        if not in_truth.any():
            values.append(float("nan"))
            continue
        where = np.nonzero(pred == c)
        if not where[0].size:
            values.append(0.0)
            continue
        box = tuple(slice(axis.min(), axis.max() + 1) for axis in where)
        values.append(float(in_truth[box].sum() / in_truth.sum()))
    return values


def case_metrics(case: str, prediction: torch.Tensor, truth: torch.Tensor, class_names: list[str],
                 spacing: tuple[float, ...], with_distances: bool = True,
                 scored: list[int] | None = None) -> CaseMetrics:
    """All per-case metrics of one prediction; ``class_names`` include the background first.

    Classes outside ``scored`` (not annotated at the case's site) get nan: their truth is unknown.
    """
    n_classes = len(class_names)
    names = class_names[1:]
    dice = dict(zip(names, dice_per_class(prediction, truth, n_classes)))
    hd95 = dict(zip(names, hd95_per_class(prediction, truth, n_classes, spacing))) if with_distances else {}
    coverage = dict(zip(names, bbox_coverage_per_class(prediction, truth, n_classes)))
    failed = [name for index, name in enumerate(names, start=1)
              if bool((truth == index).any()) and not bool((prediction == index).any())]
    for index, name in enumerate(names, start=1):
        if scored is not None and index not in scored:
            for values in (dice, hd95, coverage):
                if name in values:
                    values[name] = float("nan")
    return CaseMetrics(case, dice, hd95, coverage, failed)
