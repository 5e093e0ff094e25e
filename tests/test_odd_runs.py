"""Runs that used to die after training (issue 8, finding 8): one test case at a site, and a case name
from a file name that is not UTF-8. Both must end with results, cross_site.csv, a report and the console table."""

import io
import json
import math
import re

import tomli_w
from rich.console import Console

from fedseg import cli
from fedseg.console import results_table
from fedseg.evaluation.cross_site import cross_site_matrix, cross_site_records, read_cross_site_csv
from fedseg.evaluation.results import summarise_model
from fedseg.evaluation.statistics import comparisons_markdown, paired_comparisons
from fedseg.evaluation.tables import mean_sd, number
from fedseg.experiment import parse_experiment
from fedseg.report.markdown import write_report
from fedseg.runtime.run_directory import RunDirectory
from fedseg.study import write_results
from fedseg.types import CaseMetrics
from tiny_experiment import tiny_experiment


def case(name, dice, failed=()):
    return CaseMetrics(name, dice={"lesion": dice}, hd95={"lesion": 1.0}, bbox_coverage={"lesion": 1.0},
                       failed=list(failed))


def shown(table) -> str:
    console = Console(file=io.StringIO(), width=160)
    console.print(table)
    return console.file.getvalue()


def test_a_site_with_one_test_case_has_no_sd_and_no_p_value_and_nothing_crashes():
    per_site = {"A": [case("a1", 0.8)], "B": [case("b1", 0.6), case("b2", 0.4)]}
    results = summarise_model("FL_global", per_site)
    assert results["sites"]["A"]["sd_dice"] is None and results["sites"]["A"]["n_cases"] == 1
    assert re.search(r"│ A +│ +1 │ +0.800 │", shown(results_table(results)))  # was: TypeError on sd None
    records = cross_site_records("FL_global", per_site) + cross_site_records("local", {
        "A": [case("a1", 0.7)], "B": [case("b1", 0.5), case("b2", 0.1)]})
    assert cross_site_matrix(records)["rows"]["FL_global"]["A"] == {"mean": 0.8, "sd": None, "n": 1}
    site_a = paired_comparisons(records, n_resamples=100)[0]
    assert site_a["n_pairs"] == 1 and site_a["t_p"] is None and site_a["wilcoxon_p"] is None
    assert site_a["t_reason"] == site_a["wilcoxon_reason"] == "fewer than 2 pairs"
    assert "| FL_global − local | A | 1 | +0.100 [+0.100, +0.100] | n/a (fewer than 2 pairs) | n/a (fewer " \
           "than 2 pairs) |" in comparisons_markdown([site_a])


def test_missing_numbers_are_written_n_a():
    assert [mean_sd(None, None), mean_sd(math.nan, 0.1), mean_sd(0.5, None), mean_sd(0.5, math.nan)] == \
           ["n/a", "n/a", "0.500", "0.500"]
    assert mean_sd(0.5, 0.25) == "0.500 ± 0.250"
    assert [number(None), number(math.nan), number(1)] == ["n/a", "n/a", "1.000"]


def test_single_test_cases_run_to_the_end_of_simulate(tmp_path, monkeypatch):
    experiment = tmp_path / "experiment.toml"
    experiment.write_text(tomli_w.dumps(tiny_experiment(tmp_path, rounds=1, n_cases=5)))  # 1 test case per site
    output = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=output, width=160))
    assert cli.main(["simulate", str(experiment), "--out", str(tmp_path / "run")]) == 0, output.getvalue()
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {site["sd_dice"] for site in results["sites"].values()} == {None}
    assert re.search(r"│ hospital_a +│ +1 │ +\d\.\d{3} │", output.getvalue())  # console table, no sd
    assert "report:" in output.getvalue()


def test_a_case_name_from_a_file_name_that_is_not_utf8_is_written_everywhere(tmp_path):
    """The data layer now refuses such names; the writers must not depend on that (they used to die)."""
    experiment = parse_experiment(tiny_experiment(tmp_path, rounds=1))
    run_dir = RunDirectory(tmp_path / "run")
    run_dir.create()
    (run_dir.root / "experiment.toml").write_text(experiment.to_toml())
    name = b"case\xff.png".decode("utf-8", "surrogateescape")
    scores = {model: {"hospital_a": [case(name, 0.7 + shift, ["lesion"]), case("c2", 0.5)],
                      "hospital_b": [case("c3", 0.4)]}
              for model, shift in (("FL_global", 0.1), ("standalone_hospital_a", 0.0))}
    results = write_results(run_dir, experiment, scores, started=0.0, resumed=False)
    assert [c["case"] for c in results["sites"]["hospital_a"]["cases"]] == [name, "c2"]
    (run_dir.root / "cross_site.csv").read_bytes().decode("utf-8")  # strict UTF-8
    assert name in {r["case"] for r in read_cross_site_csv(run_dir.root / "cross_site.csv")}
    assert json.loads((run_dir.root / "results.json").read_text())["sites"]["hospital_a"]["cases"][0]["case"] == name
    html = (write_report(run_dir.root).with_suffix(".html")).read_text()  # lists the case as a failure
    assert "hospital_a/case\\\\xff.png (lesion)" in (run_dir.root / "report.md").read_text()  # \\ escaped
    assert "hospital_a/case\\xff.png (lesion)" in html
