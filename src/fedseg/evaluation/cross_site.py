"""Every model tested on every site's test cases, as one long table.

One row per (model, site, case, class, metric) keeps the format flat: a CSV that pandas or R
load as is, and the single input of the cross-site matrix, the failure list and the paired tests.

Row format: ``{"model", "site", "case", "class", "metric", "value"}`` with ``value`` a float.
``metric`` is ``dice``, ``hd95`` or ``bbox_coverage`` per foreground class, each also with
class ``"mean"`` (mean over classes ignoring nan; an inf hd95 makes the mean inf), and
``failed`` per class: 1.0 when the class is in the truth but the prediction misses it entirely
(``CaseMetrics.failed``), else 0.0; ``failed`` has no ``"mean"`` row.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from fedseg.errors import UserError
from fedseg.evaluation.tables import markdown_table, mean_sd
from fedseg.evaluation.text import Markdown, load_name, markdown_text, printable, store_name
from fedseg.files import write_text_atomic
from fedseg.types import CaseMetrics

METRICS = ("dice", "hd95", "bbox_coverage")
FAILED = "failed"
MEAN = "mean"
OVERALL = "overall"
FIELDS = ("model", "site", "case", "class", "metric", "value")
NAMES = ("model", "site", "case", "class")
"""Fields that hold names from other parties (stored with ``text.store_name``)."""
LOWER_IS_BETTER = {"hd95", FAILED}


def cross_site_records(model: str, per_site: dict[str, list[CaseMetrics]]) -> list[dict]:
    """Long-format rows of ``model``'s test metrics on each site's cases."""
    return [{"model": model, "site": site, "case": case.case, "class": cls, "metric": metric, "value": value}
            for site, cases in per_site.items() for case in cases for metric, cls, value in _case_values(case)]


def _case_values(case: CaseMetrics) -> Iterator[tuple[str, str, float]]:
    for metric in METRICS:
        by_class = getattr(case, metric)
        yield from ((metric, cls, float(value)) for cls, value in by_class.items())
        if by_class:
            yield metric, MEAN, _mean_ignoring_nan(by_class.values())
    for cls in dict.fromkeys([*case.dice, *case.failed]):
        yield FAILED, cls, float(cls in case.failed)


def _mean_ignoring_nan(values: Iterable[float]) -> float:
    kept = [v for v in values if not np.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def write_cross_site_csv(records: list[dict], path: Path) -> Path:
    """Write the rows as CSV (atomically); values use ``repr`` so inf, nan and every digit survive.

    Names are written with ``text.store_name`` (valid UTF-8 whatever bytes a file name had, no
    spreadsheet formula) and read back with ``text.load_name``, so a name round-trips exactly."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({**{key: store_name(str(record[key])) for key in NAMES}, "metric": record["metric"],
                      "value": repr(float(record["value"]))} for record in records)
    write_text_atomic(Path(path), buffer.getvalue())
    return Path(path)


def read_cross_site_csv(path: Path) -> list[dict]:
    """The rows of a cross_site.csv; UserError naming the file and line if it is not one."""
    try:
        with Path(path).open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not set(FIELDS) <= set(reader.fieldnames):
                raise UserError(f"{path}: not a fedseg cross_site.csv (header {reader.fieldnames}, expected "
                                f"{','.join(FIELDS)}); rewrite it with the fedseg that made the run")
            return [_row(row, path, reader.line_num) for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: not a fedseg cross_site.csv ({exc})") from None


def _row(row: dict, path: Path, line: int) -> dict:
    try:
        if any(row[key] is None for key in FIELDS):
            raise ValueError("too few columns")
        return {**{key: load_name(row[key]) for key in NAMES}, "metric": row["metric"], "value": float(row["value"])}
    except ValueError as exc:
        raise UserError(f"{path} line {line}: {printable(exc)}; is it a fedseg cross_site.csv?") from None


def values_by_case(records: list[dict], metric: str, cls: str) -> dict[str, dict[tuple[str, str], float]]:
    """``{model: {(site, case): value}}`` for one metric and class, models in order of appearance."""
    values: dict[str, dict[tuple[str, str], float]] = {}
    for record in records:
        if record["metric"] == metric and record["class"] == cls:
            by_case = values.setdefault(record["model"], {})
            key = (record["site"], record["case"])
            if key in by_case:
                raise ValueError(f"{printable(record['model'])} has two {metric}/{cls} values for "
                                 f"{printable(key[0])}/{printable(key[1])}")
            by_case[key] = record["value"]
    return values


def cross_site_matrix(records: list[dict], metric: str = "dice", cls: str = MEAN) -> dict:
    """Mean, sd and n of ``metric`` per model (rows) and test site plus ``overall`` (columns).

    ``{"metric", "class", "columns": [*sites, "overall"], "rows": {model: {column: cell}}}`` with
    cell ``{"mean", "sd", "n"}``; nan values are left out, sd (ddof=1) is None when n < 2 or a
    value is inf, mean is None when n == 0.
    """
    values = values_by_case(records, metric, cls)
    sites = sorted({site for by_case in values.values() for site, _ in by_case})
    rows = {model: {**{site: _summary([v for (s, _), v in by_case.items() if s == site]) for site in sites},
                    OVERALL: _summary(list(by_case.values()))}
            for model, by_case in values.items()}
    return {"metric": metric, "class": cls, "columns": [*sites, OVERALL], "rows": rows}


def _summary(values: list[float]) -> dict:
    kept = np.array([v for v in values if not np.isnan(v)], dtype=float)
    n = len(kept)
    sd = float(np.std(kept, ddof=1)) if n >= 2 and np.isfinite(kept).all() else None
    return {"mean": float(np.mean(kept)) if n else None, "sd": sd, "n": n}


def cross_site_markdown(matrix: dict, digits: int = 3) -> str:
    """The matrix as "mean ± sd" cells, the best mean of each column in bold."""
    pick = min if matrix["metric"] in LOWER_IS_BETTER else max
    best = {}
    for column in matrix["columns"]:
        means = [cells[column]["mean"] for cells in matrix["rows"].values() if cells[column]["mean"] is not None]
        best[column] = pick(means) if means else None
    rows = [[model, *(_cell(cells[column], best[column], digits) for column in matrix["columns"])]
            for model, cells in matrix["rows"].items()]
    return markdown_table(["model", *matrix["columns"]], rows)


def _cell(cell: dict, best: float | None, digits: int) -> Markdown:
    text = mean_sd(cell["mean"], cell["sd"], digits)
    return Markdown(f"**{text}**" if cell["mean"] is not None and cell["mean"] == best else text)



def failures(records: list[dict]) -> list[dict]:
    """Per model, the test cases where it missed a class present in the truth.

    ``[{"model", "n_cases", "n_failed", "cases": [{"site", "case", "classes"}]}]``: ``n_cases``
    counts the cases evaluated, ``n_failed`` those with at least one missed class.
    """
    evaluated: dict[str, set[tuple[str, str]]] = {}
    missed: dict[str, dict[tuple[str, str], list[str]]] = {}
    for record in records:
        if record["metric"] == FAILED:
            key = (record["site"], record["case"])
            evaluated.setdefault(record["model"], set()).add(key)
            if record["value"]:
                missed.setdefault(record["model"], {}).setdefault(key, []).append(record["class"])
    return [{"model": model, "n_cases": len(keys), "n_failed": len(missed.get(model, {})),
             "cases": [{"site": site, "case": case, "classes": classes}
                       for (site, case), classes in sorted(missed.get(model, {}).items())]}
            for model, keys in evaluated.items()]


def describe_failures(failure: dict) -> Markdown:
    """One sentence of Markdown for the report, names escaped.

    E.g. ``FL\\_global failed on 2 of 40 cases: A/c1 (tumour), B/c7 (tumour, cyst)``."""
    head = f"{markdown_text(failure['model'])} failed on {failure['n_failed']} of {failure['n_cases']} cases"
    listed = ", ".join(f"{markdown_text(c['site'])}/{markdown_text(c['case'])} "
                       f"({', '.join(map(markdown_text, c['classes']))})" for c in failure["cases"])
    return Markdown(f"{head}: {listed}" if listed else f"{head}.")
