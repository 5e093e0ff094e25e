"""Figures of every model on every site: a heatmap of the mean Dice matrix, box plots of per-case Dice."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from fedseg.evaluation.cross_site import MEAN, OVERALL, values_by_case
from fedseg.evaluation.text import figure_text
from fedseg.report.figures import palette, save


def dice_heatmap(matrix: dict, path: Path) -> Path:
    """Models (rows) by test sites and overall (columns), each cell annotated with its mean Dice."""
    models, columns = list(matrix["rows"]), matrix["columns"]
    means = np.array([[_or_nan(matrix["rows"][m][c]["mean"]) for c in columns] for m in models])
    figure, axis = plt.subplots(figsize=(2.6 + 1.2 * len(columns), 1.4 + 0.42 * len(models)))
    colours = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    image = axis.imshow(np.ma.masked_invalid(means), cmap=colours, vmin=0, vmax=1, aspect="auto")
    for (row, column), value in np.ndenumerate(means):
        text = "n/a" if np.isnan(value) else f"{value:.3f}"
        axis.text(column, row, text, ha="center", va="center", fontsize=9,
                  color="white" if value < 0.6 else "black")  # nan compares False: black on grey
    axis.set_xticks(range(len(columns)), [figure_text(c) for c in columns], rotation=30, ha="right")
    axis.set_yticks(range(len(models)), [figure_text(m) for m in models])
    axis.axvline(len(columns) - 1.5, color="white", linewidth=3)  # overall is not one more site
    axis.set_xlabel("test cases of")
    axis.set_title(f"mean test Dice ({figure_text(matrix['class'])} over classes) per model and site", fontsize=10)
    figure.colorbar(image, ax=axis, label="mean Dice", fraction=0.05, pad=0.03)
    return save(figure, path)


def dice_boxplot(records: list[dict], path: Path, per_row: int = 4) -> Path:
    """Per-case mean Dice: a panel per test site (and overall), a horizontal box per model, cases as dots."""
    values = values_by_case(records, "dice", MEAN)
    models = list(values)
    columns = [*sorted({site for by_case in values.values() for site, _ in by_case}), OVERALL]
    n_rows, n_columns = -(-len(columns) // per_row), min(len(columns), per_row)
    height = max(2.0, 1.0 + 0.3 * len(models))
    figure, axes = plt.subplots(n_rows, n_columns, figsize=(1.5 + 2.8 * n_columns, n_rows * height), sharey=True,
                                squeeze=False)
    colours = palette(models)
    rng = np.random.default_rng(0)  # the same jitter every time the report is written
    for axis, column in zip(axes.flat, columns):
        for row, model in enumerate(models):
            cases = [v for (s, _), v in values[model].items() if column in (s, OVERALL) and np.isfinite(v)]
            if cases:
                axis.boxplot(cases, positions=[row], widths=0.6, orientation="horizontal", patch_artist=True,
                             showfliers=False, medianprops={"color": "black"},
                             boxprops={"facecolor": (*colours[model][:3], 0.4), "edgecolor": colours[model]},
                             whiskerprops={"color": colours[model]}, capprops={"color": colours[model]})
                axis.scatter(cases, row + rng.uniform(-0.18, 0.18, len(cases)), s=8, color=colours[model],
                             zorder=3, linewidths=0)
        axis.set_title(figure_text(column), fontsize=10, fontweight="bold" if column == OVERALL else "normal")
        axis.set_xlim(-0.02, 1.02)
        axis.set_xlabel("per-case mean Dice", fontsize=9)
        axis.grid(axis="x", alpha=0.3)
    for axis in axes.flat[len(columns):]:
        axis.set_visible(False)
    axes[0][0].set_yticks(range(len(models)), [figure_text(m) for m in models])
    axes[0][0].invert_yaxis()  # the first model on top, as in the tables
    figure.tight_layout()
    return save(figure, path)


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value
