"""Issue 8, findings 1 and 2 inside the plans: an update is checked in full against the global model
before any of it is used, so a rejected update changes nothing (sum, weights, server moments)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedseg.plans.checks import UpdateRejected, check_weights
from fedseg.plans.registry import build_plan
from fedseg.types import Update

SITES = ["a", "b", "c"]
AVERAGING = ["fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad"]
ALL_PLANS = [*AVERAGING, "cyclic", "single_transfer"]


def start() -> dict:
    """A small global model: the first parameter is folded in before the last, as in a state dict."""
    return {"a.weight": np.full(3, 0.5, np.float32), "b.count": np.array(2, np.int64),
            "z.weight": np.zeros((2, 2), np.float32)}


def honest(value: float = 1.0) -> dict:
    return {"a.weight": np.full(3, value, np.float32), "b.count": np.array(4, np.int64),
            "z.weight": np.full((2, 2), value, np.float32)}


def hostile_updates() -> dict[str, dict]:
    good = honest()
    return {
        # finding 1: a first tensor of 1e6 and a last tensor of the wrong shape
        "huge first, bad shape last": {**good, "a.weight": np.full(3, 1e6, np.float32),
                                       "z.weight": np.zeros(3, np.float32)},
        "nan": {**good, "z.weight": np.array([[0, np.nan], [0, 0]], np.float32)},
        "inf": {**good, "a.weight": np.array([np.inf, 0, 0], np.float32)},
        "missing key": {k: v for k, v in good.items() if k != "z.weight"},
        "extra key": {**good, "evil": np.zeros(1, np.float32)},
        "int8 dtype": {**good, "a.weight": np.ones(3, np.int8)},
        "float64 dtype": {**good, "z.weight": np.ones((2, 2), np.float64)},
        "list, not array": {**good, "a.weight": [1.0, 1.0, 1.0]},
        "not a table": [1, 2, 3],
    }


def plan_for(name: str):
    return build_plan(name, 0, SITES, 1, None, {}, rounds=2)


def visited(plan, round: int = 0) -> str:
    return next(iter(plan.configure_train(round, SITES)))


@pytest.mark.parametrize("kind", list(hostile_updates()))
@pytest.mark.parametrize("name", ALL_PLANS)
def test_a_rejected_update_changes_nothing(name, kind):
    plan = plan_for(name)
    site = visited(plan)
    state_before = {k: {p: a.copy() for p, a in v.items()} for k, v in plan.state_dict().items()}
    aggregation = plan.aggregation(0, start())
    with pytest.raises(UpdateRejected):
        aggregation.add(site, Update(hostile_updates()[kind], n_samples=5))
    if name in AVERAGING:  # the round goes on with the honest sites: the hostile one left no trace
        for other in ("b", "c"):
            aggregation.add(other, Update(honest(), n_samples=5))
        expected = plan_for(name).aggregate_train(0, start(), {s: Update(honest(), 5) for s in ("b", "c")})
        result = aggregation.result()
        assert set(plan.round_summary()["aggregation_weights"]) == {"b", "c"}
        assert all(np.array_equal(result[k], expected[k]) and result[k].dtype == expected[k].dtype for k in expected)
        assert all(np.isfinite(a).all() for state in plan.state_dict().values() for a in state.values())
    else:
        assert plan.state_dict() == state_before == {}
        with pytest.raises(ValueError, match="got no update"):
            aggregation.result()


def test_finding_1_rejected_update_does_not_leak_into_the_average():
    """The review's case: a site sends 1e6 first and a wrong shape last; before, the sum kept 1e6."""
    plan = plan_for("fedavg")
    aggregation = plan.aggregation(0, start())
    aggregation.add("a", Update(honest(0.125), 1))
    with pytest.raises(UpdateRejected, match=r"'z.weight' has shape \(3,\), expected \(2, 2\)"):
        aggregation.add("b", Update(hostile_updates()["huge first, bad shape last"], 1))
    result = aggregation.result()
    assert result["a.weight"][0] == np.float32(0.125)
    assert plan.round_summary() == {"aggregation_weights": {"a": 1.0}}


def test_an_int8_update_cannot_change_the_dtype_of_the_average():
    plan = plan_for("fedavg")
    aggregation = plan.aggregation(0, start())
    with pytest.raises(UpdateRejected, match="dtype int8, expected float32"):
        aggregation.add("a", Update(hostile_updates()["int8 dtype"], 1))
    aggregation.add("b", Update(honest(0.6), 1))
    assert aggregation.result()["a.weight"].dtype == np.float32


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_fedopt_moments_never_become_nan(name):
    plan = plan_for(name)
    weights = start()
    for round in range(2):
        with pytest.raises(UpdateRejected):
            plan.aggregate_train(round, weights, {"a": Update(hostile_updates()["nan"], 1),
                                                  "b": Update(honest(), 1)})
        weights = plan.aggregate_train(round, weights, {"b": Update(honest(), 1), "c": Update(honest(0.5), 1)})
    assert all(np.isfinite(a).all() for state in plan.state_dict().values() for a in state.values())
    assert all(np.isfinite(v).all() for v in weights.values())


def test_fedopt_refuses_a_non_finite_server_step_and_keeps_its_moments():
    plan = build_plan("fedadam", 0, SITES, 1, None, {}, rounds=1)
    big = {"w": np.array([1e300], np.float64)}  # finite, but g * g overflows
    with pytest.raises(ValueError, match="non-finite second moment"):
        plan.aggregate_train(0, {"w": np.array([-1e300])}, {"a": Update(big, 1)})
    assert plan.state_dict() == {"m": {}, "v": {}}


@pytest.mark.parametrize("n_samples", [0, -3, 2.5, True, math.nan, "10", None])
def test_self_reported_sample_counts_must_be_whole_and_positive(n_samples):
    aggregation = plan_for("fedavg").aggregation(0, start())
    with pytest.raises(UpdateRejected, match="n_samples"):
        aggregation.add("a", Update(honest(), n_samples))


@pytest.mark.parametrize("dice", [1e6, -0.5, math.inf, "0.9", None])
def test_self_reported_val_dice_must_be_a_dice(dice):
    plan = build_plan("fedavg", 0, SITES, 1, None, {"weighted_by": "val_dice"}, rounds=1)
    aggregation = plan.aggregation(0, start())
    with pytest.raises(UpdateRejected, match="val_dice"):
        aggregation.add("a", Update(honest(), 1, {"val_dice": dice}))


@pytest.mark.parametrize("name", ALL_PLANS)
def test_a_second_update_from_the_same_site_is_rejected(name):
    plan = plan_for(name)
    aggregation = plan.aggregation(0, start())
    site = visited(plan)
    aggregation.add(site, Update(honest(), 1))
    with pytest.raises(UpdateRejected, match="second update"):
        aggregation.add(site, Update(honest(9.0), 1))
    clean = plan_for(name).aggregate_train(0, start(), {site: Update(honest(), 1)})
    assert np.array_equal(aggregation.result()["a.weight"], clean["a.weight"])


def test_cyclic_rejects_a_site_that_is_not_visited_when_it_arrives():
    plan = plan_for("cyclic")
    aggregation = plan.aggregation(0, start())
    with pytest.raises(UpdateRejected, match="round 0 expects an update from 'a' only"):
        aggregation.add("b", Update(honest(), 1))


def test_check_weights_names_the_parameter_and_keeps_messages_short():
    template = {f"layer{i}": np.zeros(1, np.float32) for i in range(8)}
    with pytest.raises(UpdateRejected) as caught:
        check_weights({}, template, "update from site 'x'")
    message = str(caught.value)
    assert message.startswith("update from site 'x': parameter names differ") and "and 3 more" in message
    with pytest.raises(UpdateRejected, match=r"^update: parameter 'x{76}\.\.\. is a str, not an array$"):
        check_weights({"x" * 500: "s"}, {"x" * 500: np.zeros(1)})


# --- property-based: random arrays are accepted exactly when they match, never a traceback ------
DTYPES = st.sampled_from([np.float32, np.float64, np.int64, np.int8, np.float16])
arrays = hnp.arrays(dtype=DTYPES, shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=3),
                    elements={"allow_nan": True, "allow_infinity": True})


@settings(max_examples=200, deadline=None)
@given(update=st.dictionaries(st.sampled_from(["w", "b", "x"]), arrays, max_size=3))
def test_random_updates_are_rejected_or_match_the_template(update):
    template = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}
    matches = (update.keys() == template.keys()
               and all(update[k].shape == template[k].shape and update[k].dtype == template[k].dtype
                       and np.isfinite(update[k]).all() for k in template))
    aggregation = plan_for("fedadam").aggregation(0, template)
    try:
        aggregation.add("a", Update(update, 1))
    except UpdateRejected:
        assert not matches
    else:
        assert matches
        assert all(np.isfinite(v).all() for v in aggregation.result().values())


def test_the_default_collected_aggregation_checks_updates_too():
    """A plan that only writes ``aggregate_train`` gets updates that were checked on arrival."""
    from fedseg.plans.base import ComputePlan

    class Newest(ComputePlan):
        total_rounds = 1

        def configure_train(self, round, sites):
            return {}

        def aggregate_train(self, round, global_weights, updates):
            return updates[max(updates)].weights

    aggregation = Newest().aggregation(0, start())
    for kind, weights in hostile_updates().items():
        with pytest.raises(UpdateRejected):
            aggregation.add(kind, Update(weights, 1))
    aggregation.add("a", Update(honest(), 1))
    with pytest.raises(UpdateRejected, match="second update"):
        aggregation.add("a", Update(honest(), 1))
    assert aggregation.result()["a.weight"][0] == 1.0
