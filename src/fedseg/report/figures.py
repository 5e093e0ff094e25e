"""What every report figure shares: a display-free backend, colours, saving."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
from matplotlib.figure import Figure  # noqa: E402

DPI = 110


def palette(names: list[str]) -> dict[str, tuple]:
    """A distinct colour per name, stable for the same list (tab10, tab20 beyond ten names)."""
    colours = plt.get_cmap("tab10" if len(names) <= 10 else "tab20").colors
    if len(names) > len(colours):
        colours = [plt.get_cmap("turbo")(i / max(len(names) - 1, 1)) for i in range(len(names))]
    return {name: colours[i] for i, name in enumerate(names)}


def save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return path
