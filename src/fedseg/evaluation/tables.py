"""Markdown tables, the one format the report and a terminal both show well."""

from __future__ import annotations

from fedseg.evaluation.text import markdown_cell


def markdown_table(header: list[object], rows: list[list[object]]) -> str:
    """A GitHub-flavoured Markdown table; every row has one cell per header column.

    Cells are escaped (names from other parties cannot add columns, rows, links or tags) unless they
    are ``text.Markdown``, which the code that formats numbers uses for bold and "<0.001"."""
    cells = [[markdown_cell(c) for c in header], ["---"] * len(header), *([markdown_cell(c) for c in r] for r in rows)]
    return "\n".join("| " + " | ".join(line) + " |" for line in cells)


def mean_sd(mean: float | None, sd: float | None, digits: int = 3) -> str:
    """``0.812 ± 0.050``; the mean alone when there is no sd (fewer than 2 values, or an inf); n/a without a mean."""
    if mean is None or mean != mean:
        return "n/a"
    return f"{mean:.{digits}f}" + ("" if sd is None or sd != sd else f" ± {sd:.{digits}f}")


def number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"
