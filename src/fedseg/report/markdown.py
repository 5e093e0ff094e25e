"""report.md (and report.html from it): settings, results and figures of a run, from its run directory.

Every name and value read from the run directory may come from another party (a site's case names,
an experiment's names), so it enters the Markdown only through ``text.markdown_text`` (or an
escaping table), and report.html embeds only the figures written here (``figures.figure_path``).
"""

from __future__ import annotations

import re
from pathlib import Path

from fedseg.evaluation.cross_site import cross_site_matrix, failures
from fedseg.evaluation.text import markdown_text, printable
from fedseg.files import write_text_atomic
from fedseg.report import sections
from fedseg.report.cross_site_figures import dice_boxplot, dice_heatmap
from fedseg.report.curves import learning_curves
from fedseg.report.figures import figure_path, inside
from fedseg.report.html import write_html
from fedseg.report.privacy import epsilon_figure, privacy_section
from fedseg.report.protocol import protocol, timing
from fedseg.report.run_inputs import FEDERATED, RunInputs, read_run


def write_report(root: Path) -> Path:
    """Write ``report.md``, its figures under ``figures/`` and ``report.html``; return the path of report.md."""
    run = read_run(root)
    results = run.results
    figures: list[Path] = []
    title = f"fedseg run: {printable(results.get('experiment', run.root.name))}"
    lines = [
        f"# fedseg run: {markdown_text(results.get('experiment', run.root.name))}",
        "",
        protocol(run.experiment, results),
        "",
        timing(results) + " The experiment file as run is at the end of this report.",
        "",
        f"## Test Dice of the headline model, {markdown_text(results['model'])}",
        "",
        *sections.headline_table(results, run.records),
        "",
        "Dice is computed per test case on the whole preprocessed image (sliding-window inference when "
        "training on patches) and averaged over foreground classes; the table gives mean ± sd over cases.",
        "",
        *sections.rejections(results),
        *_privacy(run, figures),
        *_cross_site(run, figures),
        *_examples(run, figures),
        *_learning_curves(run, figures),
        "## Experiment as run",
        "",
        *code_block(run.experiment_toml.rstrip(), "toml"),
        "",
    ]
    path = run.root / "report.md"
    write_text_atomic(path, "\n".join(lines))
    write_html(path, title, figures)
    return path


def code_block(text: str, language: str) -> list[str]:
    """A fenced block that ``text`` cannot close: the fence is longer than any run of backticks in it."""
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    shown = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", lambda m: f"\\x{ord(m[0]):02x}", text)  # keep \t and \n
    return [f"{fence}{language}", shown, fence]


def _cross_site(run: RunInputs, figures: list[Path]) -> list[str]:
    """Every model on every site: tables, figures, paired tests and failures; smaller with one model."""
    if not run.records:
        return []
    folder = run.root / "figures"
    models = run.results.get("models") or list(cross_site_matrix(run.records)["rows"])
    boxes = _figure(run, figures, dice_boxplot(run.records, figure_path(folder, "dice_boxplot")), "per-case Dice")
    if len(models) == 1:
        return ["## Test metrics per site", "", *sections.single_model_table(run.records), *boxes,
                "## Failures", "", *sections.failure_lines(failures(run.records))]
    heatmap = dice_heatmap(cross_site_matrix(run.records), figure_path(folder, "cross_site_dice"))
    lines = ["## Every model on every site", "",
             f"The {len(models)} models ({', '.join(map(markdown_text, models))}) each tested on every site's test "
             "cases; columns are the sites whose test cases were used, `overall` pools all of them.", "",
             *_figure(run, figures, heatmap, "cross-site mean Dice"), *sections.matrix_tables(run.records),
             "### Per-case Dice", "", *boxes]
    if run.results.get("comparisons"):
        lines += ["## Statistics", "", *sections.statistics(run.results["comparisons"])]
    return [*lines, "## Failures", "", *sections.failure_lines(failures(run.records))]


def _privacy(run: RunInputs, figures: list[Path]) -> list[str]:
    """Mechanisms, epsilon per site and attack AUC, and the figure of epsilon per round (``privacy``)."""
    records = run.runs.get(FEDERATED, [])
    path = epsilon_figure(run.results, records, figure_path(run.root / "figures", "privacy_epsilon"))
    return privacy_section(run.results, records, _figure(run, figures, path, "epsilon spent per round") if path else [])


def _learning_curves(run: RunInputs, figures: list[Path]) -> list[str]:
    path = learning_curves(run.runs, figure_path(run.root / "figures", "learning_curve"))
    if path is None:
        return []
    return ["## Learning curves", "",
            "Per arm (row) and site (colour): the mean training loss of each round's local training, and the "
            "validation Dice of the arm's model after each round (dashed, for a model trained across sites: "
            "of each site's model right after its local training).", "",
            *_figure(run, figures, path, "learning curves")]


def _examples(run: RunInputs, figures: list[Path]) -> list[str]:
    """Overlay pictures written with the run (``overlays.overlay_figure``), one per site that has one."""
    sites = sorted({record["site"] for record in run.records} | set(run.results.get("sites") or {}))
    folder = run.root / "figures"
    found = [(site, path) for site in sites if inside(path := figure_path(folder, "examples", site), folder)]
    if not found:
        return []
    lines = ["## Examples", "", f"Image, truth and {markdown_text(run.results['model'])}'s prediction for each "
             "site's best, median and worst test case by mean Dice (3D: the slice with the most truth).", ""]
    for site, path in found:
        lines += [f"Test cases of {markdown_text(site)}:", "", *_figure(run, figures, path, "examples")]
    return lines


def _figure(run: RunInputs, figures: list[Path], path: Path, alt: str) -> list[str]:
    """The Markdown image of a figure this module wrote, remembered for embedding into report.html."""
    figures.append(path)
    return [f"![{alt}]({path.relative_to(run.root).as_posix()})", ""]
