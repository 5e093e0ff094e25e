"""Robust aggregators of the averaging plans against straightforward numpy/scipy references."""

import itertools

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from fedseg.plans.fedopt import second_moment
from fedseg.plans.registry import build_plan
from fedseg.plans.robust import distance
from fedseg.types import Update

SITES = ["a", "b", "c", "d", "e"]


def plan(aggregator: str, name: str = "fedavg", sites=SITES, **options):
    return build_plan(name, 0, sites, 1, None, {"aggregator": aggregator, **options}, rounds=3)


def random_round(seed: int = 0, n_sites: int = 5, outlier: float | None = None):
    """A float32 global model and one update per site (with an int buffer); optionally the last
    site sends its update scaled far away."""
    rng = np.random.default_rng(seed)
    start = {"w": rng.normal(size=(3, 4)).astype(np.float32), "steps": np.array(10, np.int64)}
    updates = {}
    for i, site in enumerate(SITES[:n_sites]):
        w = (start["w"] + rng.normal(scale=0.1, size=(3, 4))).astype(np.float32)
        updates[site] = Update({"w": w, "steps": np.array(10 + i, np.int64)}, n_samples=int(rng.integers(1, 20)))
    if outlier is not None:
        updates[SITES[n_sites - 1]].weights["w"] = (start["w"] + outlier).astype(np.float32)
    return start, updates


def stack(updates, key="w"):
    return np.stack([updates[s].weights[key].astype(np.float64) for s in sorted(updates)])


def test_median_is_numpys_coordinate_wise_median():
    start, updates = random_round()
    p = plan("median")
    result = p.aggregate_train(0, start, updates)
    np.testing.assert_array_equal(result["w"], np.median(stack(updates), axis=0).astype(np.float32))
    assert result["steps"] == 12 and result["steps"].dtype == np.int64  # median of 10..14, an integer buffer
    assert p.round_summary()["aggregator"] == "median"
    assert p.round_summary()["aggregation_weights"] == pytest.approx(dict.fromkeys(SITES, 0.2))  # unweighted


@pytest.mark.parametrize("trim, n_sites", [(0.2, 5), (0.25, 4), (0.4, 5), (0.1, 10)])
def test_trimmed_mean_is_scipys_trim_mean(trim, n_sites):
    sites = [f"s{i}" for i in range(n_sites)]
    rng = np.random.default_rng(n_sites)
    start = {"w": np.zeros(7, np.float32), "n": np.array(0, np.int64)}
    updates = {s: Update({"w": rng.normal(size=7).astype(np.float32), "n": np.array(i * 3, np.int64)}, 1)
               for i, s in enumerate(sites)}
    p = plan("trimmed_mean", sites=sites, trim=trim)
    result = p.aggregate_train(0, start, updates)
    expected = scipy.stats.trim_mean(stack(updates), trim, axis=0)
    np.testing.assert_allclose(result["w"], expected.astype(np.float32), rtol=1e-6)
    assert result["n"] == np.rint(scipy.stats.trim_mean(stack(updates, "n"), trim))
    cut = int(trim * n_sites)
    summary = p.round_summary()
    assert summary["trimmed_per_end"] == cut
    assert sum(summary["trimmed_share"].values()) == pytest.approx(2 * cut)  # 2 cut values dropped per coordinate


def test_clipped_mean_clips_differences_to_the_factor_times_the_median_norm():
    start, updates = random_round(outlier=5.0)
    p = plan("clipped_mean", clip_factor=1.5)
    result = p.aggregate_train(0, start, updates)
    g = start["w"].astype(np.float64)
    norms = {s: float(np.linalg.norm(u.weights["w"] - g)) for s, u in updates.items()}
    bound = 1.5 * np.median(list(norms.values()))
    total = sum(u.n_samples for u in updates.values())
    expected = sum(u.n_samples * (g + min(1.0, bound / norms[s]) * (u.weights["w"].astype(np.float64) - g))
                   for s, u in sorted(updates.items())) / total
    np.testing.assert_allclose(result["w"], expected.astype(np.float32), rtol=1e-6)
    summary = p.round_summary()
    assert summary["clipped"] == [s for s in SITES if norms[s] > bound] and "e" in summary["clipped"]
    assert summary["norms"] == pytest.approx(norms) and summary["clip_bound"] == pytest.approx(bound)
    assert summary["aggregation_weights"] == pytest.approx({s: u.n_samples / total for s, u in updates.items()})


def test_clipped_mean_without_outliers_is_the_weighted_mean():
    start, updates = random_round()
    clipped = plan("clipped_mean", clip_factor=100.0).aggregate_train(0, start, updates)
    mean = plan("mean").aggregate_train(0, start, updates)
    assert all(np.array_equal(clipped[k], mean[k]) for k in mean)


@pytest.mark.parametrize("aggregator", ["median", "trimmed_mean", "clipped_mean"])
def test_robust_results_do_not_depend_on_arrival_order(aggregator):
    start, updates = random_round(seed=3, outlier=3.0)
    results = []
    for order in itertools.islice(itertools.permutations(SITES), 0, 120, 17):
        aggregation = plan(aggregator).aggregation(0, start)
        for site in order:
            aggregation.add(site, updates[site])
        results.append(aggregation.result())
    assert all(np.array_equal(r["w"], results[0]["w"]) and r["steps"] == results[0]["steps"] for r in results)


@pytest.mark.parametrize("aggregator", ["median", "trimmed_mean"])
def test_one_huge_outlier_stays_outside_the_result(aggregator):
    start, updates = random_round(seed=5, outlier=1e6)
    honest = stack({s: u for s, u in updates.items() if s != "e"})
    p = plan(aggregator)
    result = p.aggregate_train(0, start, updates)["w"]
    assert (result >= honest.min(axis=0).astype(np.float32)).all()
    assert (result <= honest.max(axis=0).astype(np.float32)).all()
    mean = plan("mean").aggregate_train(0, start, updates)["w"]
    assert (mean > honest.max(axis=0)).all()  # the test can fail: the plain mean is dragged away
    if aggregator == "trimmed_mean":
        assert p.round_summary()["trimmed_share"]["e"] == pytest.approx(1.0)


def test_clipped_mean_bounds_a_huge_outlier():
    start, updates = random_round(seed=5, outlier=1e6)
    result = plan("clipped_mean").aggregate_train(0, start, updates)
    norms = [distance(u.weights, start) for u in updates.values()]
    assert max(norms) > 1e6 and distance(result, start) <= 2.0 * float(np.median(norms)) * (1 + 1e-6)
    assert distance(plan("mean").aggregate_train(0, start, updates), start) > 1e5  # what clipping prevents


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_fedopt_steps_from_the_robust_combination(name):
    start, updates = random_round(seed=7, outlier=1e3)
    p = plan("median", name=name, server_lr=0.1)
    result = p.aggregate_train(0, start, updates)
    g = start["w"].astype(np.float64) - np.median(stack(updates), axis=0)
    m = 0.1 * g
    v = second_moment(name.removeprefix("fed"), np.full_like(g, 1e-6), g * g, 0.99)
    np.testing.assert_allclose(result["w"], (start["w"] - 0.1 * m / (np.sqrt(v) + 1e-3)).astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(p.m["w"], m, rtol=1e-12)
    assert result["steps"] == 12


# --- options -------------------------------------------------------------------------------------
@pytest.mark.parametrize("options, match", [
    ({"aggregator": "krum"}, "aggregator must be one of"),
    ({"trim": 0.2}, "trim applies only to aggregator = 'trimmed_mean', not 'mean'"),
    ({"aggregator": "median", "clip_factor": 2.0}, "clip_factor applies only to aggregator = 'clipped_mean'"),
    ({"aggregator": "trimmed_mean", "trim": 0.5}, r"trim must be in \(0, 0.5\)"),
    ({"aggregator": "trimmed_mean", "trim": 0.0}, r"trim must be in \(0, 0.5\)"),
    ({"aggregator": "clipped_mean", "clip_factor": 0}, "clip_factor must be a finite number > 0"),
    ({"aggregator": "median", "weighted_by": "val_dice"}, "weighted_by does not apply to aggregator = 'median'"),
    ({"aggregator": "trimmed_mean", "metric_floor": 0.1}, "metric_floor does not apply"),
    ({"aggregator": "trimmed_mean", "trim": 0.1}, r"trim = 0.1 drops no site with 5 site\(s\) per round"),
    ({"aggregator": "trimmed_mean", "fraction": 0.4}, r"drops no site with 2 site\(s\) per round"),
])
def test_aggregator_options_are_checked(options, match):
    with pytest.raises(ValueError, match=match):
        build_plan("fedavg", 0, SITES, 1, None, options, rounds=1)


def test_defaults_and_weighted_options_with_clipping():
    assert plan("trimmed_mean").aggregator.trim == 0.2
    assert plan("clipped_mean").aggregator.clip_factor == 2.0
    assert plan("clipped_mean", weighted_by="val_dice").weighting.by == "val_dice"
    with pytest.raises(ValueError, match="unknown option 'aggregator' for plan 'cyclic'"):
        build_plan("cyclic", 0, SITES, 1, None, {"aggregator": "median"}, rounds=1)


# --- properties ------------------------------------------------------------------------------------
finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.lists(finite, min_size=4, max_size=4), min_size=3, max_size=7),
       aggregator=st.sampled_from(["median", "trimmed_mean", "clipped_mean"]))
def test_robust_results_stay_within_the_updates_range(values, aggregator):
    sites = [f"s{i}" for i in range(len(values))]
    start = {"w": np.zeros(4, np.float32)}
    updates = {s: Update({"w": np.array(v, np.float32)}, 1) for s, v in zip(sites, values)}
    options = {"trim": 0.34} if aggregator == "trimmed_mean" else {}
    result = plan(aggregator, sites=sites, **options).aggregate_train(0, start, updates)["w"]
    low = np.minimum(np.min(values, axis=0), 0.0)  # clipping moves towards the global model (0 here)
    high = np.maximum(np.max(values, axis=0), 0.0)
    assert np.isfinite(result).all()
    assert (result >= low.astype(np.float32) - 1e-3).all() and (result <= high.astype(np.float32) + 1e-3).all()
