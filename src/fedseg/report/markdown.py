"""report.md (and report.html from it): settings, results and figures of a run, from its run directory."""

from __future__ import annotations

from pathlib import Path

from fedseg.evaluation.cross_site import cross_site_matrix, failures
from fedseg.files import write_text_atomic
from fedseg.report import sections
from fedseg.report.cross_site_figures import dice_boxplot, dice_heatmap
from fedseg.report.curves import learning_curves
from fedseg.report.html import write_html
from fedseg.report.protocol import protocol, timing
from fedseg.report.run_inputs import RunInputs, read_run


def write_report(root: Path) -> Path:
    """Write ``report.md``, its figures under ``figures/`` and ``report.html``; return the path of report.md."""
    run = read_run(root)
    results = run.results
    lines = [
        f"# fedseg run: {results.get('experiment', run.root.name)}",
        "",
        protocol(run.experiment, results),
        "",
        timing(results) + " The experiment file as run is at the end of this report.",
        "",
        f"## Test Dice of the headline model, {results['model']}",
        "",
        *sections.headline_table(results, run.records),
        "",
        "Dice is computed per test case on the whole preprocessed image (sliding-window inference when "
        "training on patches) and averaged over foreground classes; the table gives mean ± sd over cases.",
        "",
        *_cross_site(run),
        *_examples(run),
        *_learning_curves(run),
        "## Experiment as run",
        "",
        "```toml",
        run.experiment_toml.rstrip(),
        "```",
        "",
    ]
    path = run.root / "report.md"
    write_text_atomic(path, "\n".join(lines))
    write_html(path)
    return path


def _cross_site(run: RunInputs) -> list[str]:
    """Every model on every site: tables, figures, paired tests and failures; smaller with one model."""
    if not run.records:
        return []
    models = run.results.get("models") or list(cross_site_matrix(run.records)["rows"])
    boxes = _figure(run, dice_boxplot(run.records, run.root / "figures" / "dice_boxplot.png"), "per-case Dice")
    if len(models) == 1:
        return ["## Test metrics per site", "", *sections.single_model_table(run.records), *boxes,
                "## Failures", "", *sections.failure_lines(failures(run.records))]
    heatmap = dice_heatmap(cross_site_matrix(run.records), run.root / "figures" / "cross_site_dice.png")
    lines = ["## Every model on every site", "",
             f"The {len(models)} models ({', '.join(models)}) each tested on every site's test cases; columns are "
             "the sites whose test cases were used, `overall` pools all of them.", "",
             *_figure(run, heatmap, "cross-site mean Dice"), *sections.matrix_tables(run.records),
             "### Per-case Dice", "", *boxes]
    if run.results.get("comparisons"):
        lines += ["## Statistics", "", *sections.statistics(run.results["comparisons"])]
    return [*lines, "## Failures", "", *sections.failure_lines(failures(run.records))]


def _learning_curves(run: RunInputs) -> list[str]:
    path = learning_curves(run.runs, run.root / "figures" / "learning_curve.png")
    if path is None:
        return []
    return ["## Learning curves", "",
            "Per arm (row) and site (colour): the mean training loss of each round's local training, and the "
            "validation Dice of the arm's model after each round (dashed, for a model trained across sites: "
            "of each site's model right after its local training).", "", *_figure(run, path, "learning curves")]


def _examples(run: RunInputs) -> list[str]:
    """Overlay pictures written with the run (``figures/examples_<site>.png``), one per site."""
    paths = sorted((run.root / "figures").glob("examples_*.png"))
    if not paths:
        return []
    lines = ["## Examples", "", f"Image, truth and {run.results['model']}'s prediction for each site's best, "
             "median and worst test case by mean Dice (3D: the slice with the most truth).", ""]
    for path in paths:
        lines.extend(_figure(run, path, f"examples of {path.stem.removeprefix('examples_')}"))
    return lines


def _figure(run: RunInputs, path: Path, alt: str) -> list[str]:
    return [f"![{alt}]({path.relative_to(run.root).as_posix()})", ""]
