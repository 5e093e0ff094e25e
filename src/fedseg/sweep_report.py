"""What ``fedseg sweep`` shows: the ranked table (``sweep.md``), ``sweep.json``, the validation curves
against the budget (``sweep.png``) and the progress bar over cells.

Every number comes from the cells' run directories (cross_site.csv through ``compare.pooled_records``,
metrics.jsonl), which may have been edited: metric lines are checked before use, and every name or
value shown in Markdown is escaped (``markdown_table``, ``markdown_text``), in the figure by ``figure_text``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedseg.compare import comparison_report, pooled_records
from fedseg.console import ProgressObserver
from fedseg.evaluation.cross_site import OVERALL, cross_site_matrix
from fedseg.evaluation.statistics import paired_comparisons
from fedseg.evaluation.tables import markdown_table, number
from fedseg.evaluation.text import Markdown, figure_text, markdown_text
from fedseg.experiment import Experiment
from fedseg.files import write_text_atomic
from fedseg.report.figures import palette, save
from fedseg.runtime.run_directory import RunDirectory

BASELINE = "baseline"
"""The folder of the base experiment's comparison arms; no cell is named so (``sweep.cell_names``)."""


def write_sweep(out: Path, cells: dict[str, Experiment], overrides: dict[str, dict], baseline: Experiment | None,
                experiment_path: Path, grid_path: Path) -> dict[str, Any]:
    """sweep.json, sweep.png and sweep.md of the finished cells in ``out``; sweep.json's content."""
    folders = [out / name for name in cells] + ([out / BASELINE] if baseline else [])
    records = pooled_records(folders)
    matrix = cross_site_matrix(records)["rows"]
    compared = sorted((m for m in matrix if m.startswith(f"{BASELINE}/")), key=lambda m: not m.endswith("/centralized"))
    seed = next(iter(cells.values())).seed
    rows = [{"cell": name, "overrides": overrides[name], "budget": budget(experiment),
             "mean_dice": matrix.get(f"{name}/FL_global", {}).get(OVERALL, {}).get("mean"),
             "vs": _versus(records, f"{name}/FL_global", compared, seed),
             "curve": validation_curve(out / name, experiment)} for name, experiment in cells.items()]
    centralized = matrix.get(f"{BASELINE}/centralized", {}).get(OVERALL, {}).get("mean")
    for row in rows:
        row["ratio_to_centralized"] = row["mean_dice"] / centralized if row["mean_dice"] is not None \
            and centralized else None
    rows.sort(key=lambda row: (row["mean_dice"] is None, -(row["mean_dice"] or 0.0)))
    means = {model.split("/", 1)[1]: matrix[model][OVERALL]["mean"] for model in compared}
    standalone = [model for model in means if model.startswith("standalone_")]
    summary = {"experiment": str(experiment_path), "grid": str(grid_path), "finished": True,
               "baseline": {"arms": list(baseline.arms), "mean_dice": means,
                            "best_standalone": max(standalone, key=lambda m: means[m] or 0.0, default=None)}
               if baseline else None,
               "cells": [{"rank": rank, **row} for rank, row in enumerate(rows, 1)]}
    write_text_atomic(out / "sweep.json", json.dumps(summary, indent=2, default=str, allow_nan=True) + "\n")
    sweep_figure(summary["cells"], out / "sweep.png")
    reference = f"{rows[0]['cell']}/FL_global"
    details = comparison_report(folders, reference if reference in matrix else None, seed)
    write_text_atomic(out / "sweep.md", sweep_markdown(summary, [m.split("/", 1)[1] for m in compared]) + details)
    return summary


def budget(experiment: Experiment) -> dict[str, Any]:
    """Local epochs (or local steps) a site trains over the whole run: rounds x per round."""
    training = experiment.training
    steps = training.local_steps
    return {"value": experiment.federation.rounds * (training.local_epochs if steps is None else steps),
            "unit": "epochs" if steps is None else "steps"}


def _versus(records: list[dict], model: str, compared: list[str], seed: int) -> dict[str, dict]:
    """``model`` minus each baseline model over all test cases, paired by case."""
    mine = [r for r in records if r["model"] == model]
    if not compared or not mine:
        return {}
    rows = paired_comparisons(mine + [r for r in records if r["model"] in compared], reference=model, seed=seed)
    return {row["model"].split("/", 1)[1]: {key: row[key] for key in
                                            ("n_pairs", "mean_difference", "wilcoxon_p", "wilcoxon_reason")}
            for row in rows if row["site"] == OVERALL}


def validation_curve(run_dir: Path, experiment: Experiment) -> list[list[float]]:
    """``[[budget so far, global validation Dice averaged over sites (and folds)], ...]`` per round."""
    rounds = experiment.runtime_rounds
    per_round: dict[int, list[float]] = {}
    folds = sorted((run_dir / "arms").glob("FL_global_fold*")) if experiment.federation.folds > 1 else []
    for folder in [run_dir, *folds]:
        for record in RunDirectory(folder).read_metrics():
            index = record.get("round") if isinstance(record, dict) else None
            dice = record.get("global_val_dice") if isinstance(record, dict) else None
            if _number(index) and isinstance(index, int) and 0 <= index < rounds and _number(dice) \
                    and 0 <= dice <= 1:
                per_round.setdefault(index, []).append(float(dice))
    total = budget(experiment)["value"]
    return [[(index + 1) * total / rounds, sum(values) / len(values)] for index, values in sorted(per_round.items())]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def sweep_markdown(summary: dict[str, Any], compared: list[str]) -> str:
    """The ranked table and the figure; differences are the cell's FL_global minus the other model."""
    best_standalone = (summary["baseline"] or {}).get("best_standalone")
    header = ["rank", "cell", "settings", "budget", "FL_global test Dice"]
    header += ["ratio to centralized"] if "centralized" in compared else []
    header += [f"− {model}{' (best standalone)' if model == best_standalone else ''}: difference (Wilcoxon p)"
               for model in compared]
    rows = []
    for cell in summary["cells"]:
        row = [str(cell["rank"]), cell["cell"], settings_text(cell["overrides"]),
               f"{cell['budget']['value']} {cell['budget']['unit']}", Markdown(number(cell["mean_dice"]))]
        row += [Markdown(number(cell["ratio_to_centralized"]))] if "centralized" in compared else []
        row += [_difference(cell["vs"].get(model)) for model in compared]
        rows.append(row)
    baseline = summary["baseline"]
    lines = [f"# Sweep of {markdown_text(summary['experiment'])}", "",
             f"Grid: {markdown_text(summary['grid'])}; {len(summary['cells'])} cell(s), each the base experiment "
             "with the settings shown and the federated arm only"
             + (f"; the base experiment's comparison arms ({markdown_text(', '.join(baseline['arms']))}) ran once "
                "in baseline/" if baseline else "; the base experiment has no comparison arms") + ".",
             "Budget: local epochs (or steps) each site trains over the run (rounds x per round). Differences: the "
             "cell's FL_global minus the other model's mean Dice over all test cases, paired by case.", "",
             "## Cells ranked by FL_global test Dice", "", markdown_table(header, rows), "",
             "![global validation Dice against budget](sweep.png)", "", ""]
    return "\n".join(lines)


def settings_text(overrides: dict[str, Any]) -> str:
    """``plan.name = fedprox, plan.proximal_mu = 0.01`` (plain text: escape it where it is shown)."""
    return ", ".join(f"{key} = {value if isinstance(value, str) else json.dumps(value, default=str)}"
                     for key, value in overrides.items())


def _difference(row: dict | None) -> Markdown:
    if not row or row["mean_difference"] is None:
        return Markdown("n/a")
    p = row["wilcoxon_p"]
    shown = "n/a" if p is None else "<0.001" if p < 0.001 else f"{p:.3f}"
    return Markdown(f"{row['mean_difference']:+.3f} (p {shown})")


def sweep_figure(cells: list[dict], path: Path) -> Path:
    """Global validation Dice (mean over sites) against the budget so far, one line per cell."""
    figure, axis = plt.subplots(figsize=(8, 4.5))
    colours = palette([cell["cell"] for cell in cells])
    for cell in cells:
        if cell["curve"]:
            budgets, dice = zip(*cell["curve"])
            axis.plot(budgets, dice, marker="o", markersize=3, linewidth=1.4, color=colours[cell["cell"]],
                      label=figure_text(cell["cell"]))
    units = sorted({cell["budget"]["unit"] for cell in cells})
    axis.set_xlabel(f"budget: local {' or '.join(units)} per site so far")
    axis.set_ylabel("global validation Dice (mean over sites)")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    if axis.lines:
        axis.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    else:
        axis.text(0.5, 0.5, "no global validation Dice recorded (federation.validate_global = false?)",
                  ha="center", transform=axis.transAxes)
    return save(figure, path)


def ranking_lines(summary: dict[str, Any]) -> list[str]:
    """One plain line per cell for the terminal, best first."""
    return [f"{cell['rank']:>3}. {cell['cell']}: FL_global test Dice {number(cell['mean_dice'])}"
            + ("" if cell["ratio_to_centralized"] is None else f", {cell['ratio_to_centralized']:.2f} x centralized")
            for cell in summary["cells"]]


class SweepProgress:
    """One progress bar over the sweep's runs (baseline and cells), with each arm's bar beneath it."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[status]}"), console=console)
        self.task = self.progress.add_task("sweep", total=None, status="")

    def __enter__(self) -> "SweepProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def step(self, done: int, total: int, name: str | None = None, finished: bool = False) -> None:
        """``done`` of ``total`` runs (baseline, cells) are over; ``name`` is the next, ``finished`` earlier."""
        self.progress.update(self.task, total=total, completed=done,
                             description="sweep" + (f": {escape(name)}" if name else ""),
                             status="finished earlier, kept" if finished else "")

    def arm(self, label: str) -> ProgressObserver:
        return _ArmBar(self.progress, label)


class _ArmBar(ProgressObserver):
    """``console.ProgressObserver`` drawn as a second bar of the sweep's progress display."""

    def __init__(self, progress: Progress, label: str):
        self.progress, self.label = progress, escape(label)
        self.task = progress.add_task(self.label, total=None, status="")

    def __enter__(self) -> "_ArmBar":
        return self

    def __exit__(self, *exc) -> None:
        self.progress.remove_task(self.task)
