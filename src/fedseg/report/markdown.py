"""report.md: settings, learning curves and test results of a run, from its run directory."""

from __future__ import annotations

from pathlib import Path

from fedseg.report.figures import learning_curves
from fedseg.runtime.run_directory import RunDirectory


def write_report(root: Path) -> Path:
    run_dir = RunDirectory(root)
    records = run_dir.read_metrics()
    results = run_dir.read_json("results.json")
    experiment = (run_dir.root / "experiment.toml").read_text()
    curve = learning_curves(records, run_dir.figures / "learning_curve.png")
    lines = [
        f"# fedseg run: {results.get('experiment', run_dir.root.name)}",
        "",
        f"Model evaluated: **{results['model']}** after {results.get('rounds', '?')} rounds; "
        f"wall time {results.get('wall_time_s', 0):.1f} s "
        f"(site training {results.get('train_seconds', 0):.1f} s).",
        "",
        "## Test Dice of the global model",
        "",
        *results_table(results),
        "",
        "Dice is computed per test case on the whole preprocessed image (sliding-window inference when "
        "training on patches) and averaged over foreground classes; the table gives mean ± sd over cases.",
        "",
        "## Learning curves",
        "",
        f"![learning curves]({curve.relative_to(run_dir.root)})",
        "",
        "## Experiment as run",
        "",
        "```toml",
        experiment.rstrip(),
        "```",
        "",
    ]
    path = run_dir.root / "report.md"
    path.write_text("\n".join(lines))
    return path


def results_table(results: dict) -> list[str]:
    rows = dict(results["sites"], overall=results["overall"])
    classes = list(results["overall"]["dice_per_class"])
    header = ["site", "test cases", "mean Dice", *[f"Dice {c}" for c in classes]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for site, summary in rows.items():
        cells = [f"**{site}**" if site == "overall" else site, str(summary["n_cases"]),
                 _mean_sd(summary["mean_dice"], summary["sd_dice"]),
                 *[_number(summary["dice_per_class"].get(c)) for c in classes]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _mean_sd(mean, sd) -> str:
    return "n/a" if mean is None else f"{mean:.3f} ± {sd:.3f}"


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


