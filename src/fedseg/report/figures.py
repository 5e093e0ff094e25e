"""What every report figure shares: a display-free backend, colours, file names, saving."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
from matplotlib.figure import Figure  # noqa: E402

DPI = 110
KEPT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
"""Names used in figure file names as they are; '~' is never in one, so suffixed slugs cannot equal them."""


def palette(names: list[str]) -> dict[str, tuple]:
    """A distinct colour per name, stable for the same list (tab10, tab20 beyond ten names)."""
    colours = plt.get_cmap("tab10" if len(names) <= 10 else "tab20").colors
    if len(names) > len(colours):
        colours = [plt.get_cmap("turbo")(i / max(len(names) - 1, 1)) for i in range(len(names))]
    return {name: colours[i] for i, name in enumerate(names)}


def slug(name: str) -> str:
    """A file-name part for ``name`` (a site or model: it may come from another party).

    The name itself when it is short, lower-case ``[a-z0-9_-]``; otherwise its letters and digits
    (lower case, others as ``-``, at most 40) and ``~`` with 16 hex digits of its SHA-256. Never empty,
    never holds ``/``, ``.`` or ``\\``, and different names give different slugs, also on a file system
    that ignores case."""
    if KEPT_NAME.fullmatch(name):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return re.sub(r"[^a-z0-9_-]", "-", name.lower()[:40], flags=re.ASCII) + "~" + digest


def figure_path(figures: Path, kind: str, name: str | None = None) -> Path:
    """``figures/<kind>.png`` or ``figures/<kind>_<slug(name)>.png``, the only way report figures are named."""
    if not KEPT_NAME.fullmatch(kind):
        raise ValueError(f"figure kind {kind!r} must match {KEPT_NAME.pattern}")
    stem = kind if name is None else f"{kind}_{slug(name)}"
    return Path(figures) / f"{stem}.png"


def inside(path: Path, folder: Path) -> bool:
    """``path`` is a regular file inside ``folder`` once links are resolved: a figure the report may show."""
    resolved = Path(path).resolve()
    return resolved.is_relative_to(Path(folder).resolve()) and resolved.is_file()


def save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return path
