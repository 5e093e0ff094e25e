"""Is the reference model (by default the federated global model) better than each other model?

Models are compared case by case on the same test cases, so that the case mix of a site cancels
out: a paired t-test, a Wilcoxon signed-rank test (Dice differences are often skewed, so one test
without a normality assumption), and a bootstrap CI that says how large the mean difference is.

Row format of ``paired_comparisons``: ``{"reference", "model", "site" (a site or "overall"),
"metric", "class", "n_pairs", "n_unmatched", "n_not_finite", "mean_reference", "mean_model",
"mean_difference", "ci_low", "ci_high", "confidence", "t_statistic", "t_p", "t_reason",
"wilcoxon_statistic", "wilcoxon_p", "wilcoxon_reason"}``. Differences are reference minus model
(positive = reference higher, which is better for Dice and worse for hd95). Cases scored for only
one of the two models are dropped and counted in ``n_unmatched``, pairs with a nan or inf value in
``n_not_finite``. A p-value the data cannot give is None, with the reason in ``*_reason``.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from fedseg.evaluation.cross_site import MEAN, OVERALL, values_by_case
from fedseg.evaluation.tables import markdown_table
from fedseg.evaluation.text import Markdown

CaseValues = dict[tuple[str, str], float]


def paired_comparisons(records: list[dict], reference: str = "FL_global", metric: str = "dice",
                       cls: str = MEAN, n_resamples: int = 10_000, seed: int = 0,
                       confidence: float = 0.95) -> list[dict]:
    """The reference against every other model, per test site and over all sites' cases."""
    values = values_by_case(records, metric, cls)
    if reference not in values:
        raise ValueError(f"no {metric}/{cls} records of reference model {reference!r}; have {sorted(values)}")
    rows = []
    for model, other in values.items():
        if model == reference:
            continue
        sites = sorted({site for site, _ in values[reference].keys() | other.keys()})
        for site in [*sites, OVERALL]:
            comparison = compare_paired(_on_site(values[reference], site), _on_site(other, site),
                                        n_resamples, seed, confidence)
            rows.append({"reference": reference, "model": model, "site": site, "metric": metric, "class": cls,
                         **comparison})
    return rows


def _on_site(values: CaseValues, site: str) -> CaseValues:
    return values if site == OVERALL else {key: v for key, v in values.items() if key[0] == site}


def compare_paired(reference: CaseValues, model: CaseValues, n_resamples: int = 10_000, seed: int = 0,
                   confidence: float = 0.95) -> dict:
    """Tests and bootstrap CI of reference minus model over the cases both have finite values for."""
    shared = sorted(reference.keys() & model.keys())
    pairs = [(reference[k], model[k]) for k in shared if np.isfinite(reference[k]) and np.isfinite(model[k])]
    ours, theirs = np.array(pairs, dtype=float).reshape(-1, 2).T
    differences = ours - theirs
    low, high = bootstrap_ci(differences, n_resamples, seed, confidence)
    return {"n_pairs": len(pairs), "n_unmatched": len(reference.keys() ^ model.keys()),
            "n_not_finite": len(shared) - len(pairs), "mean_reference": _mean(ours), "mean_model": _mean(theirs),
            "mean_difference": _mean(differences), "ci_low": low, "ci_high": high, "confidence": confidence,
            **_paired_test("t", stats.ttest_rel, ours, theirs, _constant),
            **_paired_test("wilcoxon", stats.wilcoxon, ours, theirs, _all_zero)}


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if values.size else None


def _constant(differences: np.ndarray) -> str | None:
    same = np.allclose(differences, differences[0], rtol=1e-9, atol=1e-12)
    return "the differences are all equal (zero variance)" if same else None


def _all_zero(differences: np.ndarray) -> str | None:
    return "all differences are zero" if not differences.any() else None


def _paired_test(name: str, test, ours: np.ndarray, theirs: np.ndarray, untestable) -> dict:
    """Run ``test(ours, theirs)`` unless the data cannot give a p-value; then p is None with a reason."""
    reason = "fewer than 2 pairs" if ours.size < 2 else untestable(ours - theirs)
    statistic = p = None
    if reason is None:
        result = test(ours, theirs)
        statistic, p = float(result.statistic), float(result.pvalue)
        if np.isnan(p):
            statistic, p, reason = None, None, "scipy returned nan"
    return {f"{name}_statistic": statistic, f"{name}_p": p, f"{name}_reason": reason}


def bootstrap_ci(differences: np.ndarray, n_resamples: int = 10_000, seed: int = 0,
                 confidence: float = 0.95, chunk: int = 1_000) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of the mean (resampling cases with replacement), same for a seed."""
    differences = np.asarray(differences, dtype=float)
    if differences.size == 0:
        return None, None
    rng, n = np.random.default_rng(seed), differences.size
    sizes = [min(chunk, n_resamples - start) for start in range(0, n_resamples, chunk)]  # bounded memory
    means = np.concatenate([differences[rng.integers(0, n, size=(size, n))].mean(axis=1) for size in sizes])
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def comparisons_markdown(rows: list[dict], digits: int = 3) -> str:
    """One line per model and site: pairs, mean difference with its CI, and both p-values."""
    confidence = rows[0]["confidence"] if rows else 0.95
    header = ["reference − model", "site", "pairs", Markdown(f"mean difference [{confidence:.0%} CI]"),
              "paired t-test p", "Wilcoxon p"]
    lines = [[f"{r['reference']} − {r['model']}", r["site"], str(r["n_pairs"]), _difference(r, digits),
              _p_value(r["t_p"], r["t_reason"]), _p_value(r["wilcoxon_p"], r["wilcoxon_reason"])] for r in rows]
    return markdown_table(header, lines)


def _difference(row: dict, digits: int) -> Markdown:
    if row["mean_difference"] is None:
        return Markdown("n/a")
    if row["ci_low"] is None:
        return Markdown(f"{row['mean_difference']:+.{digits}f}")
    return Markdown(f"{row['mean_difference']:+.{digits}f} [{row['ci_low']:+.{digits}f}, {row['ci_high']:+.{digits}f}]")


def _p_value(p: float | None, reason: str | None) -> str:
    if p is None:
        return f"n/a ({reason})"
    return Markdown("<0.001") if p < 0.001 else f"{p:.3f}"
