"""Cross-site records, their CSV, the model × site matrix and the failure list, on hand-made numbers."""

import math

import pytest

from fedseg.evaluation.cross_site import (
    cross_site_markdown, cross_site_matrix, cross_site_records, describe_failures, failures, read_cross_site_csv,
    values_by_case, write_cross_site_csv)
from fedseg.types import CaseMetrics

INF, NAN = math.inf, math.nan


def scored(name, tumour, cyst, hd95=(2.0, 4.0), bbox=(1.0, 0.5), failed=()):
    return CaseMetrics(name, dice={"tumour": tumour, "cyst": cyst}, hd95=dict(zip(("tumour", "cyst"), hd95)),
                       bbox_coverage=dict(zip(("tumour", "cyst"), bbox)), failed=list(failed))


# Mean Dice per case: FL_global A/c1 0.8, A/c2 0.4, B/c3 0.6; local_A A/c1 0.6, A/c2 0.4, B/c3 0.1.
RECORDS = [
    *cross_site_records("FL_global", {"A": [scored("c1", 0.9, 0.7), scored("c2", 0.5, 0.3)],
                                      "B": [scored("c3", 0.6, 0.6)]}),
    *cross_site_records("local_A", {"A": [scored("c1", 0.7, 0.5),
                                          scored("c2", 0.8, 0.0, hd95=(3.0, INF), bbox=(1.0, 0.0), failed=["cyst"])],
                                    "B": [scored("c3", 0.2, 0.0, hd95=(2.0, INF), bbox=(1.0, 0.0), failed=["cyst"])]}),
]


def value(records, **match):
    (found,) = [r["value"] for r in records if all(r[k] == v for k, v in match.items())]
    return found


def test_each_case_has_every_metric_per_class_plus_mean_and_failed_per_class():
    rows = [r for r in RECORDS if r["model"] == "FL_global" and r["case"] == "c1"]
    assert len(rows) == 3 * (2 + 1) + 2
    assert set(rows[0]) == {"model", "site", "case", "class", "metric", "value"}
    assert value(rows, metric="dice", **{"class": "cyst"}) == 0.7
    assert value(rows, metric="dice", **{"class": "mean"}) == pytest.approx(0.8)
    assert value(rows, metric="hd95", **{"class": "mean"}) == pytest.approx(3.0)
    assert value(rows, metric="bbox_coverage", **{"class": "mean"}) == pytest.approx(0.75)


def test_mean_over_classes_ignores_nan_and_keeps_inf():
    def mean_hd95(hd95):
        return value(cross_site_records("m", {"A": [scored("c", 0.5, 0.5, hd95=hd95)]}),
                     metric="hd95", **{"class": "mean"})
    assert mean_hd95((2.0, NAN)) == 2.0
    assert mean_hd95((2.0, INF)) == INF
    assert math.isnan(mean_hd95((NAN, NAN)))


def test_failed_rows_flag_missed_classes_only():
    rows = [r for r in RECORDS if r["model"] == "local_A" and r["case"] == "c2" and r["metric"] == "failed"]
    assert {r["class"]: r["value"] for r in rows} == {"tumour": 0.0, "cyst": 1.0}


def test_csv_round_trip_keeps_inf_nan_exact_digits_and_commas(tmp_path):
    records = [{"model": "m", "site": "A", "case": "c,1", "class": "mean", "metric": m, "value": v}
               for m, v in [("dice", 0.1 + 0.2), ("hd95", INF), ("bbox_coverage", NAN)]]
    back = read_cross_site_csv(write_cross_site_csv(records, tmp_path / "cross_site.csv"))
    assert [{**r, "value": repr(r["value"])} for r in back] == [{**r, "value": repr(r["value"])} for r in records]
    assert back[0]["value"] == 0.1 + 0.2


def test_matrix_gives_mean_sample_sd_and_n_per_site_and_overall():
    matrix = cross_site_matrix(RECORDS)
    assert matrix["columns"] == ["A", "B", "overall"]
    fl, local = matrix["rows"]["FL_global"], matrix["rows"]["local_A"]
    assert fl["A"] == pytest.approx({"mean": 0.6, "sd": math.sqrt(0.08), "n": 2})
    assert fl["B"] == pytest.approx({"mean": 0.6, "sd": None, "n": 1})
    assert fl["overall"] == pytest.approx({"mean": 0.6, "sd": 0.2, "n": 3})
    assert local["overall"] == pytest.approx({"mean": 1.1 / 3, "sd": math.sqrt(0.19 / 3), "n": 3})


def test_markdown_bolds_the_highest_dice_of_each_column():
    table = cross_site_markdown(cross_site_matrix(RECORDS))
    assert table.splitlines()[0] == "| model | A | B | overall |"
    assert "| FL_global | **0.600 ± 0.283** | **0.600** | **0.600 ± 0.200** |" in table
    assert "| local_A | 0.500 ± 0.141 | 0.100 | 0.367 ± 0.252 |" in table


def test_hd95_matrix_keeps_inf_without_sd_and_bolds_the_lowest():
    matrix = cross_site_matrix(RECORDS, metric="hd95", cls="cyst")
    assert matrix["rows"]["local_A"]["A"] == {"mean": INF, "sd": None, "n": 2}
    table = cross_site_markdown(matrix)
    assert "| FL_global | **4.000 ± 0.000** | **4.000** | **4.000 ± 0.000** |" in table
    assert "| local_A | inf | inf | inf |" in table


def test_failures_list_the_missed_cases_per_model():
    found = {f["model"]: f for f in failures(RECORDS)}
    assert found["FL_global"] == {"model": "FL_global", "n_cases": 3, "n_failed": 0, "cases": []}
    assert found["local_A"]["n_failed"] == 2
    assert describe_failures(found["local_A"]) == "local_A failed on 2 of 3 cases: A/c2 (cyst), B/c3 (cyst)"
    assert describe_failures(found["FL_global"]) == "FL_global failed on 0 of 3 cases."


def test_two_values_for_one_case_are_an_error():
    with pytest.raises(ValueError, match="two dice/mean values for A/c1"):
        values_by_case(RECORDS + RECORDS[:11], "dice", "mean")
