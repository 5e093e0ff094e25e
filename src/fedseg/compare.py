"""Compare models of several runs on the same test cases, e.g. cyclic transfer against FedAvg.

Each run's models are renamed ``<run>/<model>`` and pooled; the paired tests then need the runs
to share test cases (same data, seed and splits), which is checked: a comparison of runs whose
test cases differ would pair nothing, so it is an error rather than an empty table. Names in the
runs' CSVs come from other parties: the Markdown escapes them.
"""

from __future__ import annotations

from pathlib import Path

from fedseg.errors import UserError
from fedseg.evaluation.cross_site import cross_site_matrix, cross_site_markdown, read_cross_site_csv
from fedseg.evaluation.statistics import comparisons_markdown, paired_comparisons
from fedseg.evaluation.text import markdown_text, printable


def pooled_records(run_dirs: list[Path]) -> list[dict]:
    """Every run's cross-site records, models renamed ``<run folder name>/<model>``."""
    names = [Path(d).name for d in run_dirs]
    if len(set(names)) != len(names):
        raise UserError(f"run directories need distinct folder names to tell their models apart: {names}")
    records, cases = [], []
    for run_dir, name in zip(run_dirs, names):
        path = Path(run_dir) / "cross_site.csv"
        if not path.exists():
            raise UserError(f"{path} not found: is {run_dir} a finished fedseg run directory?")
        rows = read_cross_site_csv(path)
        cases.append({(r["site"], r["case"]) for r in rows})
        records.extend({**r, "model": f"{name}/{r['model']}"} for r in rows)
    if any(c != cases[0] for c in cases[1:]):
        raise UserError("the runs were not scored on the same test cases (different data, seed or splits); "
                        "paired tests need the same cases")
    return records


def comparison_report(run_dirs: list[Path], reference: str | None = None, seed: int = 0) -> str:
    """Markdown: the cross-site Dice matrix of every model of every run, and paired tests."""
    records = pooled_records(run_dirs)
    models = list(dict.fromkeys(r["model"] for r in records))
    reference = reference or models[0]
    if reference not in models:
        raise UserError(f"--reference {printable(reference)!r} is not one of the models: "
                        f"{', '.join(map(printable, models))}")
    return "\n".join([
        "## Cross-site test Dice", "", cross_site_markdown(cross_site_matrix(records)), "",
        f"## Paired comparisons against {markdown_text(reference)}", "",
        comparisons_markdown(paired_comparisons(records, reference=reference, seed=seed)), ""])
