"""Learning curves: training loss and validation Dice per round, a row per arm, a colour per site."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from fedseg.evaluation.text import figure_text
from fedseg.report.figures import palette, save


def arm_rows(runs: dict[str, list[dict]]) -> dict[str, dict[str, list[dict]]]:
    """``{row label: {run: records}}``: runs named ``<prefix>_<its only site>`` (one model per site,
    e.g. ``standalone_hospital_a``) share the row ``<prefix>``; every other run has a row of its own."""
    rows: dict[str, dict[str, list[dict]]] = {}
    for name, records in runs.items():
        sites = {r["site"] for r in records}
        only = next(iter(sites)) if len(sites) == 1 else None
        label = name.removesuffix(f"_{only}") if only and name.endswith(f"_{only}") else name
        if records:
            rows.setdefault(label, {})[name] = records
    return rows


def learning_curves(runs: dict[str, list[dict]], path: Path) -> Path | None:
    """One row per arm (see ``arm_rows``): local training loss, and validation Dice of the arm's model
    after each round (solid) and, for a model trained across sites, of each site's local model (dashed)."""
    rows = arm_rows(runs)  # a "site" named like its run (the pooled one of centralized) gets the last colour
    if not rows:
        return None
    sites = sorted({r["site"] for records in runs.values() for r in records}, key=lambda s: (s in runs, s))
    colours = palette(sites)
    figure, axes = plt.subplots(len(rows), 2, figsize=(11, 0.8 + 2.6 * len(rows)), squeeze=False, sharex=True)
    dashed = False
    for (label, row_runs), (loss_axis, dice_axis) in zip(rows.items(), axes):
        for records in row_runs.values():
            by_site = _by_site(records)
            across_sites = len(by_site) > 1
            for site, site_records in by_site.items():
                colour = colours[site]
                _line(loss_axis, site_records, "train_loss", colour, "-")
                if not _line(dice_axis, site_records, "global_val_dice", colour, "-"):
                    _line(dice_axis, site_records, "val_dice", colour, "-")
                elif across_sites:
                    dashed |= _line(dice_axis, site_records, "val_dice", colour, "--")
        loss_axis.set_title(f"{figure_text(label)}: local training loss", loc="left", fontsize=10, fontweight="bold")
        dice_axis.set_title(f"{figure_text(label)}: validation Dice", loc="left", fontsize=10, fontweight="bold")
        loss_axis.set_ylabel("loss")
        dice_axis.set_ylabel("Dice")
        dice_axis.set_ylim(0, 1)
    for axis in axes.flat:
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    for axis in axes[-1]:
        axis.set_xlabel("round")
    figure.legend(handles=_legend(colours, dashed), loc="upper center", ncol=min(len(sites) + 2, 6),
                  bbox_to_anchor=(0.5, 1.0), frameon=False, fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.45 / figure.get_figheight()))
    return save(figure, path)


def _by_site(records: list[dict]) -> dict[str, list[dict]]:
    by_site: dict[str, list[dict]] = {}
    for record in records:
        by_site.setdefault(record["site"], []).append(record)
    return by_site


def _line(axis, records: list[dict], key: str, colour, style: str) -> bool:
    points = sorted((r["round"] + 1, r[key]) for r in records if _number(r.get("round")) and _number(r.get(key)))
    if points:
        rounds, values = zip(*points)
        axis.plot(rounds, values, style, color=colour, marker="o", markersize=3, linewidth=1.4)
    return bool(points)


def _number(value) -> bool:
    """A finite int or float (metrics.jsonl may hold anything a site sent)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _legend(colours: dict[str, tuple], dashed: bool) -> list[Line2D]:
    handles = [Line2D([], [], color=colour, marker="o", markersize=3, label=figure_text(site))
               for site, colour in colours.items()]
    if dashed:
        handles += [Line2D([], [], color="grey", label="arm's model after the round"),
                    Line2D([], [], color="grey", linestyle="--", label="site's model after its local training")]
    return handles
