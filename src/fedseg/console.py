"""Terminal output with rich: training progress and result tables."""

from __future__ import annotations

import statistics

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedseg.data.inspect import SiteInspection
from fedseg.types import Update


class ProgressObserver:
    """A progress bar over the (round, site) trainings the plan schedules, with the last loss and
    validation Dice. The engine tells it how many trainings are planned (cyclic plans train one
    site a round, sampled plans a share of the sites)."""

    def __init__(self, console: Console, label: str = "training"):
        self.console = console
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[status]}"), console=console)
        self.task = self.progress.add_task(label, total=None, status="")
        self.label = label

    def __enter__(self) -> "ProgressObserver":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def planned(self, trainings: int) -> None:
        self.progress.update(self.task, total=trainings, completed=0)

    def round_started(self, round: int, sites: list[str]) -> None:
        self.progress.update(self.task, description=f"{self.label} round {round + 1}")

    def site_trained(self, round: int, site: str, update: Update) -> None:
        self.progress.update(self.task, advance=1,
                             status=f"{site}: loss {update.metrics.get('train_loss', float('nan')):.3f}")

    def round_finished(self, round: int, records: list[dict]) -> None:
        dice = [r["global_val_dice"] for r in records if r.get("global_val_dice") is not None]
        if dice:
            self.progress.update(self.task, status=f"global val Dice {sum(dice) / len(dice):.3f}")


LISTED_SITES = 8
"""Up to this many sites, a deployed round's lines name each; with more, they summarise."""


def round_line(progress: dict) -> str:
    """A deployed round as it finished: each site's training loss, or that its update was rejected
    (with more than ``LISTED_SITES`` sites: how many, the losses' min, median and max, the slowest
    site and the rejected ones)."""
    records = [r for r in progress.get("last", []) if isinstance(r, dict) and "site" in r]

    def loss(record: dict) -> float:
        value = record.get("train_loss")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")

    if len(records) <= LISTED_SITES:
        sites = ", ".join(escape(f"{r['site']} {'rejected' if 'rejected' in r else f'{loss(r):.3f}'}") for r in records)
    else:
        rejected = [str(r["site"]) for r in records if "rejected" in r]
        scored = sorted((loss(r), str(r["site"])) for r in records if "rejected" not in r and loss(r) == loss(r))
        timed = [(r["seconds"], str(r["site"])) for r in records if isinstance(r.get("seconds"), (int, float))]
        parts = [f"{len(records)} sites"]
        if scored:
            parts.append(f"loss min {scored[0][0]:.3f}, median {statistics.median(v for v, _ in scored):.3f}, "
                         f"max {scored[-1][0]:.3f} ({scored[-1][1]})")
        if timed:
            seconds, site = max(timed)
            parts.append(f"slowest {site} {seconds:.1f} s")
        if rejected:
            parts.append(f"{len(rejected)} rejected: {_some(rejected)}")
        sites = escape("; ".join(parts))
    return f"round {progress['round'] + 1}/{progress['rounds']} done: {sites}"


def running_line(progress: dict, now: float) -> str | None:
    """The running round of a deployed run: how long it has run and which sites have answered
    (with more than ``LISTED_SITES`` sites: how many are in each state, naming a few not done)."""
    current = progress.get("current")
    if not isinstance(current, dict) or not isinstance(current.get("sites"), dict):
        return None
    states = {str(site): str(state) for site, state in current["sites"].items()}
    if len(states) <= LISTED_SITES:
        sites = ", ".join(f"{site} {state}" for site, state in states.items())
    else:
        counts = {state: sum(1 for s in states.values() if s == state) for state in sorted(set(states.values()))}
        waiting = [site for site, state in states.items() if state != "trained"]
        sites = f"{len(states)} sites, " + ", ".join(f"{n} {state}" for state, n in counts.items())
        sites += f" (not done: {_some(waiting)})" if waiting else ""
    started = current.get("started")
    since = f" for {max(now - started, 0):.0f} s" if isinstance(started, (int, float)) else ""
    number = current.get("round")
    return escape(f"round {number + 1 if isinstance(number, int) else '?'} running{since}: {sites}")


def _some(names: list[str], shown: int = 3) -> str:
    """The first ``shown`` names, and how many more."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def results_table(results: dict) -> Table:
    classes = list(results["overall"]["dice_per_class"])
    table = Table(title=f"Test Dice of {results['model']}")
    for column in ("site", "cases", "mean Dice ± sd", *classes):
        table.add_column(column, justify="left" if column == "site" else "right")
    rows = dict(results["sites"], overall=results["overall"])
    for site, summary in rows.items():
        mean, sd = summary["mean_dice"], summary["sd_dice"]
        table.add_row(site, str(summary["n_cases"]), _mean_sd({"mean": mean, "sd": sd}),
                      *[_fmt(summary["dice_per_class"].get(c)) for c in classes],
                      style="bold" if site == "overall" else None)
    return table


def matrix_table(matrix: dict) -> Table:
    """Every model (rows) on every site's test cases (columns): mean ± sd of the metric."""
    table = Table(title=f"Cross-site test {matrix['metric']} ({matrix['class']} over classes)")
    table.add_column("model")
    for column in matrix["columns"]:
        table.add_column(column, justify="right")
    for model, cells in matrix["rows"].items():
        table.add_row(model, *[_mean_sd(cells[c]) for c in matrix["columns"]])
    return table


def headline(comparisons: list[dict]) -> list[str]:
    """One line per model: the reference's mean Dice difference over all test cases, CI and p."""
    lines = []
    for row in comparisons:
        if row["site"] != "overall" or row["mean_difference"] is None:
            continue
        p = row["wilcoxon_p"]
        lines.append(f"{row['reference']} - {row['model']}: mean Dice difference {row['mean_difference']:+.3f} "
                     f"[95% CI {row['ci_low']:+.3f}, {row['ci_high']:+.3f}], Wilcoxon p = "
                     f"{'n/a' if p is None else f'{p:.3g}'} ({row['n_pairs']} paired cases)")
    return lines


def _mean_sd(cell: dict) -> str:
    if cell["mean"] is None:
        return "n/a"
    return f"{cell['mean']:.3f}" + ("" if cell["sd"] is None else f" ± {cell['sd']:.3f}")


def inspection_table(inspection: SiteInspection) -> Table:
    # names and paths are escaped: rich would take "[...]" in them for markup
    table = Table(title=f"{escape(str(inspection.path))}: {len(inspection.cases)} readable case(s)")
    for column in ("case", "shape", "spacing", "ch", "intensity min..max", "label values (voxels)"):
        table.add_column(column)
    for case in inspection.cases:
        labels = ", ".join(f"{v}: {c}" for v, c in case.label_counts.items())
        table.add_row(escape(case.name), "x".join(map(str, case.shape)), "x".join(f"{s:g}" for s in case.spacing),
                      str(case.channels), f"{case.intensity[0]:g}..{case.intensity[1]:g}",
                      labels + (" (binarised at 128)" if case.binarised else ""))
    return table


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
