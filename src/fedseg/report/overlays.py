"""Pictures of results: image, truth and prediction of a site's best, median and worst test case."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedseg.evaluation.text import figure_text
from fedseg.report.figures import figure_path, plt, save

Example = tuple[str, str, float, np.ndarray, np.ndarray, np.ndarray]
"""(which: best/median/worst, case name, mean Dice, image, truth, prediction) as arrays."""


def pick_examples(cases: list[dict]) -> list[tuple[str, dict]]:
    """The best, median and worst of a site's per-case results (``{"case", "mean_dice"}``) by mean Dice."""
    ranked = sorted((c for c in cases if c["mean_dice"] == c["mean_dice"]), key=lambda c: c["mean_dice"])
    if not ranked:
        return []
    picks = [("best", ranked[-1]), ("median", ranked[len(ranked) // 2]), ("worst", ranked[0])]
    seen, unique = set(), []
    for which, case in picks:  # a site with one or two test cases shows each once
        if case["case"] not in seen:
            seen.add(case["case"])
            unique.append((which, case))
    return unique


def overlay_figure(site: str, model: str, examples: list[Example], figures: Path) -> Path:
    """``figures/examples_<site slug>.png`` (``figure_path``, where the report looks for it): one row per
    example, the image, the truth on it, the prediction on it (3D: the slice with most truth)."""
    figure, axes = plt.subplots(len(examples), 3, figsize=(9, 3 * len(examples)), squeeze=False)
    for row, (which, case, dice, image, truth, prediction) in zip(axes, examples):
        image, truth, prediction = (_view(a, truth) for a in (image, truth, prediction))
        for axis, (title, mask) in zip(row, (("image", None), ("truth", truth), (figure_text(model), prediction))):
            axis.imshow(image, cmap="gray")
            if mask is not None:
                shown = np.ma.masked_where(mask == 0, mask)
                axis.imshow(shown, cmap="autumn", alpha=0.5, vmin=1, vmax=max(1, int(truth.max())))
            axis.set_title(title if mask is not None else f"{which}: {figure_text(case)} (Dice {dice:.3f})",
                           fontsize=9)
            axis.axis("off")
    figure.suptitle(f"{figure_text(site)}: {figure_text(model)} on the best, median and worst test case",
                    fontsize=10)
    figure.tight_layout()
    return save(figure, figure_path(figures, "examples", site))


def _view(array: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """2D images as stored (rows down); 3D: the axial slice with most truth, anterior up (RAS)."""
    if array.ndim == 2:
        return array
    index = int(np.argmax((truth > 0).reshape(-1, truth.shape[-1]).sum(axis=0)))
    return np.flipud(array[..., index].T)
