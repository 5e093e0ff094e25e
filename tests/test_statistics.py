"""Paired comparisons of the reference model against the others, checked against scipy and by hand."""

import math

import numpy as np
import pytest
from scipy import stats

from fedseg.evaluation.statistics import bootstrap_ci, compare_paired, comparisons_markdown, paired_comparisons


def dice_records(model, per_site):
    """Mean-Dice rows of ``model``; case i of a site is named ``{site}{i}``."""
    return [{"model": model, "site": site, "case": f"{site}{i}", "class": "mean", "metric": "dice", "value": v}
            for site, values in per_site.items() for i, v in enumerate(values)]


def by_case(values):
    return {("A", f"A{i}"): v for i, v in enumerate(values)}


FL = {"A": [0.81, 0.75, 0.90, 0.66, 0.70], "B": [0.85, 0.78, 0.92, 0.60]}
LOCAL = {"A": [0.78, 0.70, 0.91, 0.60, 0.69], "B": [0.80, 0.79, 0.85, 0.55]}
RECORDS = dice_records("FL_global", FL) + dice_records("local_A", LOCAL) + dice_records("local_B", LOCAL)


def test_one_row_per_other_model_and_site_plus_overall():
    rows = paired_comparisons(RECORDS)
    assert [(r["model"], r["site"]) for r in rows] == [(m, s) for m in ("local_A", "local_B")
                                                        for s in ("A", "B", "overall")]
    assert {r["reference"] for r in rows} == {"FL_global"}


def test_p_values_are_scipy_paired_t_and_wilcoxon():
    site_a, _, overall = paired_comparisons(RECORDS)[:3]
    ours, theirs = FL["A"] + FL["B"], LOCAL["A"] + LOCAL["B"]
    assert overall["n_pairs"] == 9
    assert overall["t_p"] == pytest.approx(stats.ttest_rel(ours, theirs).pvalue)
    assert overall["t_statistic"] == pytest.approx(stats.ttest_rel(ours, theirs).statistic)
    assert overall["wilcoxon_p"] == pytest.approx(stats.wilcoxon(ours, theirs).pvalue)
    assert site_a["wilcoxon_p"] == pytest.approx(stats.wilcoxon(FL["A"], LOCAL["A"]).pvalue)


def test_mean_difference_is_reference_minus_model_inside_its_ci():
    site_a = paired_comparisons(RECORDS)[0]
    assert site_a["mean_difference"] == pytest.approx(0.14 / 5)  # differences .03 .05 -.01 .06 .01
    assert site_a["mean_reference"] - site_a["mean_model"] == pytest.approx(0.028)
    assert site_a["ci_low"] < site_a["mean_difference"] < site_a["ci_high"]


def test_bootstrap_ci_is_deterministic_for_a_seed_and_shrinks_with_more_cases():
    differences = np.random.default_rng(0).normal(0.03, 0.05, size=10)
    assert bootstrap_ci(differences, seed=3) == bootstrap_ci(differences, seed=3)
    assert bootstrap_ci(differences, seed=3) != bootstrap_ci(differences, seed=4)
    low, high = bootstrap_ci(differences)
    more_low, more_high = bootstrap_ci(np.tile(differences, 8))
    assert more_high - more_low < (high - low) / 2


def test_a_consistent_gain_is_significant_and_a_symmetric_one_is_not():
    base = np.linspace(0.5, 0.8, 20)
    gain = compare_paired(by_case(base + 0.1 + 0.01 * (np.arange(20) % 5 - 2)), by_case(base))
    assert gain["t_p"] < 0.01 and gain["wilcoxon_p"] < 0.01
    noise = compare_paired(by_case(base + 0.05 * np.resize([1, -1, 0.4, -0.4], 20)), by_case(base))
    assert noise["t_p"] > 0.05 and noise["wilcoxon_p"] > 0.05


def test_identical_models_give_no_p_values_but_say_why():
    same = compare_paired(by_case([0.5, 0.6, 0.7]), by_case([0.5, 0.6, 0.7]))
    assert same["t_p"] is None and "zero variance" in same["t_reason"]
    assert same["wilcoxon_p"] is None and same["wilcoxon_reason"] == "all differences are zero"
    assert (same["ci_low"], same["ci_high"]) == (0.0, 0.0)


def test_a_constant_shift_has_no_t_test_but_a_wilcoxon_p():
    shifted = compare_paired(by_case([0.6, 0.7, 0.8, 0.9, 1.0, 1.1]), by_case([0.5, 0.6, 0.7, 0.8, 0.9, 1.0]))
    assert shifted["t_p"] is None and shifted["t_reason"] is not None
    assert shifted["wilcoxon_p"] == pytest.approx(stats.wilcoxon([0.1] * 6).pvalue)


def test_fewer_than_two_pairs_give_no_p_values():
    one = compare_paired(by_case([0.9]), by_case([0.7]))
    assert one["t_p"] is None and one["wilcoxon_p"] is None
    assert one["t_reason"] == one["wilcoxon_reason"] == "fewer than 2 pairs"
    assert one["ci_low"] == one["ci_high"] == pytest.approx(0.2)
    none = compare_paired({}, by_case([0.7]))
    assert (none["n_pairs"], none["mean_difference"], none["ci_low"]) == (0, None, None)


def test_unmatched_and_non_finite_cases_are_dropped_and_counted():
    reference = {("A", "c1"): 0.9, ("A", "c2"): 0.8, ("A", "c3"): 0.7, ("B", "c9"): 0.6}
    model = {("A", "c1"): 0.8, ("A", "c2"): math.nan, ("A", "c3"): 0.6, ("A", "c4"): 0.5}
    result = compare_paired(reference, model)
    assert (result["n_pairs"], result["n_unmatched"], result["n_not_finite"]) == (2, 2, 1)
    assert result["mean_difference"] == pytest.approx(0.1)


def test_a_missing_reference_model_is_an_error():
    with pytest.raises(ValueError, match="reference model 'FL_global'"):
        paired_comparisons(dice_records("local_A", LOCAL))


def test_markdown_shows_difference_ci_and_p_values_or_why_not():
    significant = dice_records("FL_global", {"A": list(np.linspace(0.6, 0.9, 12)), "B": [0.9]})
    worse = dice_records("local_A", {"A": list(np.linspace(0.6, 0.9, 12) - 0.2 + 0.002 * np.arange(12)),
                                     "B": [0.8]})
    table = comparisons_markdown(paired_comparisons(significant + worse))
    assert table.splitlines()[0].startswith("| reference − model | site | pairs | mean difference [95% CI] |")
    assert "| FL_global − local_A | A | 12 | +0.189 [" in table
    assert "| <0.001 | <0.001 |" in table
    assert "| B | 1 | +0.100 [+0.100, +0.100] | n/a (fewer than 2 pairs) | n/a (fewer than 2 pairs) |" in table
