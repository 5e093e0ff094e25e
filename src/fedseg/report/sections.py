"""The report's result sections as Markdown lines, from ``results.json`` and ``cross_site.csv`` rows.

Names in them come from other parties: tables escape their cells, prose uses ``markdown_text``."""

from __future__ import annotations

from fedseg.evaluation.cross_site import MEAN, OVERALL, cross_site_markdown, cross_site_matrix, describe_failures
from fedseg.evaluation.statistics import comparisons_markdown
from fedseg.evaluation.tables import markdown_table, mean_sd, number
from fedseg.evaluation.text import Markdown, markdown_text

MATRICES = (("dice", "Dice", "higher is better"),
            ("hd95", "HD95 (mm)", "95th-percentile Hausdorff distance, lower is better; inf when a class is "
             "present in only one of prediction and truth"),
            ("bbox_coverage", "bounding-box coverage", "fraction of the true structure inside the predicted "
             "structure's bounding box, higher is better; 0 when nothing is predicted"))


def headline_table(results: dict, records: list[dict]) -> list[str]:
    """The headline model's test Dice per site and overall: mean ± sd over cases, and the mean per class.

    From ``cross_site.csv`` rows, so the sd is the matrices' (ddof=1); from ``results.json`` for a run
    written before that file existed."""
    if not records:
        return _results_table(results)
    model = results["model"]
    classes = list(dict.fromkeys(r["class"] for r in records if r["metric"] == "dice" and r["class"] != MEAN))
    mean = cross_site_matrix(records)["rows"][model]
    per_class = {c: cross_site_matrix(records, cls=c)["rows"][model] for c in classes}
    return _dice_table(mean, {c: {column: cell["mean"] for column, cell in cells.items()}
                              for c, cells in per_class.items()})


def _results_table(results: dict) -> list[str]:
    summaries = dict(results["sites"], overall=results["overall"])
    mean = {site: {"mean": s["mean_dice"], "sd": s["sd_dice"], "n": s["n_cases"]} for site, s in summaries.items()}
    classes = list(results["overall"]["dice_per_class"])
    return _dice_table(mean, {c: {site: s["dice_per_class"].get(c) for site, s in summaries.items()} for c in classes})


def _dice_table(mean: dict[str, dict], per_class: dict[str, dict[str, float | None]]) -> list[str]:
    header = ["site", "test cases", "mean Dice", *[f"Dice {c}" for c in per_class]]
    rows = [[Markdown(f"**{site}**") if site == OVERALL else site, str(cell["n"]), mean_sd(cell["mean"], cell["sd"]),
             *[number(means.get(site)) for means in per_class.values()]] for site, cell in mean.items()]
    return [markdown_table(header, rows)]


def matrix_tables(records: list[dict]) -> list[str]:
    """Mean ± sd of each metric per model (rows) and test site (columns), best of each column in bold."""
    lines = []
    for metric, name, note in MATRICES:
        matrix = cross_site_matrix(records, metric=metric)
        if matrix["rows"]:
            lines += [f"### {name}", "", f"Mean ± sd over test cases; {note}.", "", cross_site_markdown(matrix), ""]
    return lines


def single_model_table(records: list[dict]) -> list[str]:
    """With one model: a row per metric, a column per test site and overall."""
    matrices = [(name, note, cross_site_matrix(records, metric=metric)) for metric, name, note in MATRICES]
    matrices = [(name, note, m) for name, note, m in matrices if m["rows"]]
    if not matrices:
        return []
    columns = matrices[0][2]["columns"]
    rows = []
    for name, _, matrix in matrices:
        (cells,) = matrix["rows"].values()
        rows.append([name, *(mean_sd(cells[c]["mean"], cells[c]["sd"]) for c in columns)])
    notes = " ".join(f"{name}: {note}." for name, note, _ in matrices)
    return [markdown_table(["metric", *columns], rows), "", f"Mean ± sd over test cases. {notes}", ""]


def statistics(comparisons: list[dict]) -> list[str]:
    """What is tested, then a row per compared model and site."""
    reference, confidence = markdown_text(comparisons[0]["reference"]), comparisons[0]["confidence"]
    return [
        f"Is **{reference}** better than each other model? Each comparison pairs the two models' per-case mean "
        "Dice on the same test cases (per site, and over all sites' cases): a paired t-test, a Wilcoxon "
        f"signed-rank test (no normality assumption), and the mean difference {reference} − model with a "
        f"percentile bootstrap {confidence:.0%} confidence interval (cases resampled with replacement). "
        f"A positive difference means {reference} scored higher. The p-values are not corrected for the "
        "number of comparisons.",
        "",
        comparisons_markdown(comparisons),
        "",
    ]


def rejections(results: dict) -> list[str]:
    """Updates the coordinator rejected (round, site, reason) and sites whose test scores it could not use."""
    rejected, unscored = results.get("rejected_updates") or [], results.get("unscored_sites") or {}
    if not rejected and not unscored:
        return []
    lines = ["## Rejected updates", ""]
    if rejected:
        lines += ["Every update is checked before it is used; these were left out of their round.", "",
                  markdown_table(["round", "site", "reason"], [[_round(r.get("round")), r.get("site", "?"),
                                                               r.get("reason", "?")] for r in rejected]), ""]
    if unscored:
        lines += ["Sites whose test scores were rejected or missing (not in the tables above):", "",
                  markdown_table(["site", "reason"], [[site, reason] for site, reason in unscored.items()]), ""]
    return lines


def _round(value) -> str:
    """Rounds are counted from 1 in the report (0-based in the run directory)."""
    return str(value + 1) if isinstance(value, int) and not isinstance(value, bool) else "?"


def failure_lines(failures: list[dict]) -> list[str]:
    """A sentence per model that missed a class on some case, and one line for those that never did."""
    failed = [f for f in failures if f["n_failed"]]
    clean = [markdown_text(f["model"]) for f in failures if not f["n_failed"]]
    lines = ["A failure is a test case where the model predicts nothing of a class present in the truth.", ""]
    lines += [f"- {describe_failures(failure)}" for failure in failed]
    if clean:
        lines.append(f"- {'No failures' if not failed else 'No failures either'}: {', '.join(clean)}.")
    return [*lines, ""]

