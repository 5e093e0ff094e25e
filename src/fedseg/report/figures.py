"""Figures for the report (matplotlib, no display needed)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
from matplotlib.ticker import MaxNLocator  # noqa: E402


def learning_curves(records: list[dict], path: Path) -> Path:
    """Training loss and validation Dice per site and round, side by side."""
    series: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        for key in ("train_loss", "val_dice", "global_val_dice"):
            if record.get(key) is not None:
                series[key][record["site"]].append((record["round"] + 1, record[key]))
    panels = [("train_loss", "local training loss"), ("global_val_dice", "global model, validation Dice"),
              ("val_dice", "after local training, validation Dice")]
    panels = [(key, title) for key, title in panels if series[key]]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for axis, (key, title) in zip(axes[0], panels):
        for site, points in sorted(series[key].items()):
            rounds, values = zip(*sorted(points))
            axis.plot(rounds, values, marker="o", markersize=3, label=site)
        axis.set_title(title)
        axis.set_xlabel("round")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if "dice" in key:
            axis.set_ylim(0, 1)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
