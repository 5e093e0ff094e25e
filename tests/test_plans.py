"""Compute plans as pure numpy code on small weight dictionaries: no training involved."""

import math

import numpy as np
import pytest

from fedseg.plans.cyclic import CyclicWeightTransfer, SingleWeightTransfer
from fedseg.plans.fedavg import FedAvg
from fedseg.plans.fedopt import FedOpt
from fedseg.plans.fedprox import FedProx
from fedseg.plans.registry import build_plan
from fedseg.plans.sampling import SiteSampling
from fedseg.runtime.run_directory import RunDirectory
from fedseg.types import Update

SITES = ["a", "b", "c", "d", "e"]


def weights(values, count: int = 0) -> dict:
    return {"conv.weight": np.array(values, dtype=np.float64), "bn.num_batches_tracked": np.array(count)}


def fake_updates(configs: dict, global_weights: dict) -> dict:
    """Each site moves the global model by seeded noise and reports a seeded validation Dice."""
    updates = {}
    for site, config in configs.items():
        rng = np.random.default_rng(config.seed)
        moved = {k: np.asarray(v + rng.normal(scale=0.1, size=v.shape).astype(v.dtype) if v.dtype.kind == "f"
                               else v + 5)
                 for k, v in global_weights.items()}
        updates[site] = Update(moved, n_samples=int(rng.integers(1, 20)), metrics={"val_dice": float(rng.uniform())})
    return updates


def run_rounds(plan, global_weights: dict, rounds: range, sites=SITES) -> dict:
    for round in rounds:
        updates = fake_updates(plan.configure_train(round, sites), global_weights)
        global_weights = plan.aggregate_train(round, global_weights, updates)
    return global_weights


# --- metric-weighted averaging (Sarma et al.) --------------------------------------------------
def test_val_dice_weighting_floors_zero_missing_and_nan_dice():
    plan = FedAvg(seed=0, weighted_by="val_dice", metric_floor=0.05)
    updates = {"a": Update(weights([1.0]), 10, {"val_dice": 0.8}),
               "b": Update(weights([2.0]), 10, {"val_dice": 0.0}),
               "c": Update(weights([3.0]), 10, {}),
               "d": Update(weights([4.0]), 10, {"val_dice": math.nan})}
    result = plan.aggregate_train(0, weights([0.0]), updates)
    assert result["conv.weight"][0] == pytest.approx((0.8 * 1 + 0.05 * (2 + 3 + 4)) / 0.95)
    used = plan.round_summary()["aggregation_weights"]
    assert used == pytest.approx({"a": 0.8 / 0.95, "b": 0.05 / 0.95, "c": 0.05 / 0.95, "d": 0.05 / 0.95})


def test_all_sites_at_dice_zero_average_uniformly():
    plan = FedAvg(seed=0, weighted_by="val_dice")
    updates = {"a": Update(weights([1.0]), 1, {"val_dice": 0.0}), "b": Update(weights([3.0]), 9, {"val_dice": 0.0})}
    assert plan.aggregate_train(0, weights([0.0]), updates)["conv.weight"][0] == 2.0


def test_round_summary_reports_the_last_aggregation_for_each_weighting():
    updates = {"a": Update(weights([1.0]), 30, {"val_dice": 0.6}), "b": Update(weights([5.0]), 10, {"val_dice": 0.2})}
    expected = {"n_samples": {"a": 0.75, "b": 0.25}, "uniform": {"a": 0.5, "b": 0.5},
                "val_dice": {"a": 0.75, "b": 0.25}}
    for weighted_by, used in expected.items():
        plan = FedAvg(seed=0, weighted_by=weighted_by)
        assert plan.round_summary() == {}
        plan.aggregate_train(0, weights([0.0]), updates)
        assert plan.round_summary()["aggregation_weights"] == pytest.approx(used)


@pytest.mark.parametrize("floor", [0.0, -0.1, 1.5, math.nan])
def test_metric_floor_must_be_positive(floor):
    with pytest.raises(ValueError, match="metric_floor"):
        FedAvg(seed=0, weighted_by="val_dice", metric_floor=floor)


# --- FedProx -----------------------------------------------------------------------------------
def test_fedprox_passes_mu_to_the_trainer_only_when_positive():
    configs = FedProx(seed=0, proximal_mu=0.01).configure_train(0, SITES)
    assert [c.extra for c in configs.values()] == [{"proximal_mu": 0.01, "run_rounds": 1}] * len(SITES)
    assert [c.extra for c in FedProx(seed=0).configure_train(0, SITES).values()] == [{"run_rounds": 1}] * len(SITES)
    with pytest.raises(ValueError, match="proximal_mu"):
        FedProx(seed=0, proximal_mu=-1.0)


def test_fedprox_trains_and_averages_like_fedavg():
    prox, avg = FedProx(seed=4, proximal_mu=0.1, fraction=0.4), FedAvg(seed=4, fraction=0.4)
    assert {s: c.seed for s, c in prox.configure_train(2, SITES).items()} == \
        {s: c.seed for s, c in avg.configure_train(2, SITES).items()}
    updates = fake_updates(avg.configure_train(2, SITES), weights([0.5, 1.5]))
    assert np.array_equal(prox.aggregate_train(2, weights([0.5, 1.5]), updates)["conv.weight"],
                          avg.aggregate_train(2, weights([0.5, 1.5]), updates)["conv.weight"])


# --- FedOpt (Reddi et al.) ---------------------------------------------------------------------
def one_server_step(optimizer: str) -> tuple[dict, FedOpt]:
    plan = FedOpt(seed=0, optimizer=optimizer, server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3, weighted_by="uniform")
    updates = {"a": Update(weights([0.0, -1.0], count=10), 1), "b": Update(weights([1.0, -1.0], count=20), 1)}
    return plan.aggregate_train(0, weights([1.0, -2.0], count=0), updates), plan


@pytest.mark.parametrize("optimizer, v", [
    # g = global - average = [1, -2] - [0.5, -1] = [0.5, -1]; v starts at tau^2 = 1e-6
    ("adam", [0.99e-6 + 0.01 * 0.25, 0.99e-6 + 0.01 * 1.0]),  # beta2 v + (1 - beta2) g^2
    ("yogi", [1e-6 + 0.01 * 0.25, 1e-6 + 0.01 * 1.0]),  # v - (1 - beta2) g^2 sign(v - g^2), sign = -1
    ("adagrad", [1e-6 + 0.25, 1e-6 + 1.0]),  # v + g^2
])
def test_fedopt_first_step_matches_a_hand_computation(optimizer, v):
    result, plan = one_server_step(optimizer)
    m = [0.1 * 0.5, 0.1 * -1.0]  # (1 - beta1) g
    expected = [1.0 - 0.1 * m[0] / (math.sqrt(v[0]) + 1e-3), -2.0 - 0.1 * m[1] / (math.sqrt(v[1]) + 1e-3)]
    np.testing.assert_allclose(result["conv.weight"], expected, rtol=1e-12)
    np.testing.assert_allclose(plan.m["conv.weight"], m, rtol=1e-12)
    np.testing.assert_allclose(plan.v["conv.weight"], v, rtol=1e-12)
    assert result["bn.num_batches_tracked"] == 15  # integer buffers take the plain average
    assert plan.name == f"fed{optimizer}"
    assert plan.round_summary() == {"aggregation_weights": {"a": 0.5, "b": 0.5}}


def test_fedopt_keeps_float32_parameters_float32():
    plan = FedOpt(seed=0, server_lr=0.1)
    update = Update({"w": np.ones(3, dtype=np.float32)}, 1)
    assert plan.aggregate_train(0, {"w": np.zeros(3, dtype=np.float32)}, {"a": update})["w"].dtype == np.float32


def test_fedopt_rejects_bad_settings():
    with pytest.raises(ValueError, match="optimizer"):
        FedOpt(seed=0, optimizer="sgd")
    for key, value in (("server_lr", 0.0), ("tau", -1.0), ("beta1", 1.0), ("beta2", -0.1)):
        with pytest.raises(ValueError, match=key):
            FedOpt(seed=0, **{key: value})


# --- site sampling -----------------------------------------------------------------------------
def test_sampling_takes_the_rounded_up_fraction_reproducibly():
    plan = FedAvg(seed=0, fraction=0.5)
    chosen = [list(plan.configure_train(r, SITES)) for r in range(4)]
    assert chosen == [["a", "b", "d"], ["b", "c", "d"], ["c", "d", "e"], ["c", "d", "e"]]  # ceil(2.5) = 3
    assert chosen == [list(FedAvg(seed=0, fraction=0.5).configure_train(r, SITES[::-1]))[::-1] for r in range(4)]
    assert chosen != [list(FedAvg(seed=1, fraction=0.5).configure_train(r, SITES)) for r in range(4)]


def test_sampling_rounding_min_sites_and_all_sites():
    ten = [f"s{i}" for i in range(10)]
    assert len(SiteSampling(0.7).choose(0, 0, ten)) == 7  # 0.7 * 10 is 7.000000000000001 in floats
    assert len(SiteSampling(0.1, min_sites=4).choose(0, 0, ten)) == 4
    assert SiteSampling().choose(0, 0, ["b", "a"]) == ["b", "a"]  # everyone, in the order given


def test_too_few_sites_for_min_sites_names_both_numbers():
    with pytest.raises(ValueError, match=r"min_sites is 4 but only 3 site\(s\)"):
        FedAvg(seed=0, min_sites=4).configure_train(0, ["a", "b", "c"])
    for bad in ({"fraction": 0.0}, {"fraction": 1.2}, {"min_sites": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            FedAvg(seed=0, **bad)


# --- cyclic and single weight transfer ---------------------------------------------------------
def test_cyclic_visits_sites_in_sorted_order_one_per_round():
    plan = CyclicWeightTransfer(seed=0, sites=["c", "a", "b"], cycles=2)
    assert plan.total_rounds == 6
    visits = [plan.configure_train(r, ["a", "b", "c"]) for r in range(6)]
    assert [list(v) for v in visits] == [["a"], ["b"], ["c"], ["a"], ["b"], ["c"]]
    assert visits[4]["b"].round == 4 and visits[4]["b"].local_epochs == 1
    with pytest.raises(ValueError, match="outside the 2 cycle"):
        plan.configure_train(6, ["a", "b", "c"])


def test_cyclic_aggregate_is_the_visited_sites_model():
    plan = CyclicWeightTransfer(seed=0, sites=["a", "b", "c"], cycles=2)
    trained = weights([7.0, 8.0], count=3)
    result = plan.aggregate_train(4, weights([0.0, 0.0]), {"b": Update(trained, 5)})
    assert result.keys() == trained.keys() and all(np.array_equal(result[k], trained[k]) for k in trained)
    assert plan.round_summary() == {"visited": "b", "cycle": 1, "aggregation_weights": {"b": 1.0}}
    with pytest.raises(ValueError, match="expects an update from 'c' only"):
        plan.aggregate_train(5, weights([0.0]), {"a": Update(trained, 5)})
    with pytest.raises(ValueError, match="needs site 'c' in round 5"):
        plan.configure_train(5, ["a", "b"])


def test_shuffled_order_is_a_seeded_permutation_per_cycle():
    plan = CyclicWeightTransfer(seed=0, sites=["a", "b", "c", "d"], cycles=3, order="shuffled")
    visits = [next(iter(plan.configure_train(r, ["a", "b", "c", "d"]))) for r in range(12)]
    assert visits == ["b", "c", "d", "a", "c", "b", "a", "d", "c", "b", "d", "a"]


def test_single_transfer_is_one_cycle():
    plan = SingleWeightTransfer(seed=0, sites=["a", "b", "c"])
    assert (plan.cycles, plan.total_rounds, plan.name) == (1, 3, "single_transfer")
    with pytest.raises(ValueError, match="order"):
        SingleWeightTransfer(seed=0, sites=["a"], order="random")
    with pytest.raises(ValueError, match="cycles"):
        CyclicWeightTransfer(seed=0, sites=["a"], cycles=0)


# --- resume: N rounds straight equal N/2, checkpoint, fresh plan, N/2 more ---------------------
PLANS = {
    "fedavg_val_dice_sampled": lambda: FedAvg(seed=1, weighted_by="val_dice", fraction=0.5),
    "fedprox": lambda: FedProx(seed=1, proximal_mu=0.1),
    "fedadam": lambda: FedOpt(seed=1, optimizer="adam", server_lr=0.05, fraction=0.6),
    "fedyogi": lambda: FedOpt(seed=1, optimizer="yogi", server_lr=0.05),
    "fedadagrad": lambda: FedOpt(seed=1, optimizer="adagrad", server_lr=0.05, weighted_by="uniform"),
    "cyclic_shuffled": lambda: CyclicWeightTransfer(seed=1, sites=SITES, cycles=2, order="shuffled"),
}


@pytest.mark.parametrize("make_plan", PLANS.values(), ids=PLANS.keys())
def test_a_resumed_plan_continues_exactly_like_an_uninterrupted_one(make_plan, tmp_path):
    start = {"conv.weight": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3),
             "bn.num_batches_tracked": np.array(0, dtype=np.int64)}
    straight = run_rounds(make_plan(), start, range(10))

    first = make_plan()
    halfway = run_rounds(first, start, range(5))
    run_dir = RunDirectory(tmp_path)
    run_dir.create()
    run_dir.save_round(4, halfway, first.state_dict())
    _, saved_weights, state = run_dir.last_round()
    second = make_plan()
    second.load_state_dict(state)
    resumed = run_rounds(second, saved_weights, range(5, 10))

    for key in start:
        assert resumed[key].dtype == straight[key].dtype
        assert np.array_equal(resumed[key], straight[key]), key


def test_fedopt_resume_needs_its_state():
    """The resume test above can fail: without the optimizer state the result differs."""
    start = weights([0.5, -0.5])
    straight = run_rounds(FedOpt(seed=1, server_lr=0.05), start, range(4))
    forgetful = run_rounds(FedOpt(seed=1, server_lr=0.05), run_rounds(FedOpt(seed=1, server_lr=0.05), start,
                                                                      range(2)), range(2, 4))
    assert not np.array_equal(straight["conv.weight"], forgetful["conv.weight"])


# --- registry ----------------------------------------------------------------------------------
def test_build_plan_by_name_with_its_options():
    plan = build_plan("fedyogi", 3, SITES, 2, 10, {"server_lr": 0.3, "beta2": 0.9, "tau": 1e-2, "fraction": 0.4},
                      rounds=7)
    assert isinstance(plan, FedOpt) and plan.name == "fedyogi"
    assert (plan.seed, plan.local_epochs, plan.local_steps, plan.total_rounds) == (3, 2, 10, 7)
    assert (plan.server_lr, plan.beta1, plan.beta2, plan.tau) == (0.3, 0.9, 0.9, 1e-2)
    assert len(plan.configure_train(0, SITES)) == 2
    prox = build_plan("fedprox", 3, SITES, 1, None, {"proximal_mu": 0.5, "weighted_by": "val_dice"}, rounds=1)
    assert isinstance(prox, FedProx) and prox.proximal_mu == 0.5 and prox.weighting.by == "val_dice"
    assert type(build_plan("fedavg", 3, SITES, 1, None, {}, rounds=1)) is FedAvg
    assert build_plan("fedadagrad", 3, SITES, 1, None, {}, rounds=1).optimizer == "adagrad"
    cyclic = build_plan("cyclic", 3, ["b", "a"], 1, None, {"order": "shuffled"}, rounds=4)
    assert isinstance(cyclic, CyclicWeightTransfer) and cyclic.cycles == 4 and cyclic.order == "shuffled"
    single = build_plan("single_transfer", 3, ["b", "a"], 1, None, {}, rounds=4)
    assert isinstance(single, SingleWeightTransfer) and single.cycles == 1


AVERAGING_OPTIONS = "weighted_by, metric_floor, fraction, min_sites, aggregator, trim, clip_factor, local_norm"


@pytest.mark.parametrize("name, key, allowed", [
    ("fedavg", "proximal_mu", AVERAGING_OPTIONS),
    ("fedadagrad", "beta2", f"{AVERAGING_OPTIONS}, server_lr, beta1, tau"),
    ("single_transfer", "cycles", "order"),
    ("cyclic", "cycles", "order"),
    ("cyclic", "weighted_by", "order"),
])
def test_unknown_options_name_the_key_and_the_allowed_ones(name, key, allowed):
    with pytest.raises(ValueError, match=f"unknown option '{key}' for plan '{name}'; allowed: {allowed}$"):
        build_plan(name, 0, SITES, 1, None, {key: 1}, rounds=1)


def test_registry_rejects_unknown_plans_and_too_few_sites():
    for name in ("fednova", 3, ["fedavg"]):
        with pytest.raises(ValueError, match="plan must be one of"):
            build_plan(name, 0, SITES, 1, None, {}, rounds=1)
    with pytest.raises(ValueError, match="min_sites is 6 but only 5"):
        build_plan("fedadam", 0, SITES, 1, None, {"min_sites": 6}, rounds=1)


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "cyclic",
                                  "single_transfer"])
def test_every_plan_counts_its_own_runtime_rounds(name):
    """The registry gets [federation] rounds; only the plan says what that makes in runtime rounds."""
    plan = build_plan(name, 0, ["a", "b", "c"], 1, None, {}, rounds=7)
    assert plan.total_rounds == {"cyclic": 21, "single_transfer": 3}.get(name, 7)
    configs = [plan.configure_train(r, ["a", "b", "c"]) for r in range(plan.total_rounds)]
    assert all(configs)
    if name in ("cyclic", "single_transfer"):
        with pytest.raises(ValueError, match="outside"):
            plan.configure_train(plan.total_rounds, ["a", "b", "c"])


@pytest.mark.parametrize("name, key, value, expected", [
    ("fedavg", "min_sites", 1.5, "a whole number"),
    ("fedavg", "min_sites", True, "a whole number"),
    ("fedavg", "fraction", "a", "a finite number"),
    ("fedadam", "server_lr", True, "a finite number"),
    ("fedadam", "tau", math.inf, "a finite number"),
    ("fedprox", "proximal_mu", math.nan, "a finite number"),
    ("fedavg", "weighted_by", 3, "a string"),
    ("fedavg", "aggregator", ["median"], "a string"),
    ("cyclic", "order", None, "a string"),
])
def test_option_types_are_checked_and_named(name, key, value, expected):
    with pytest.raises(ValueError, match=f"^{key} = .* has the wrong type; expected {expected}$"):
        build_plan(name, 0, SITES, 1, None, {key: value}, rounds=1)


def test_integers_are_fine_numbers():
    plan = build_plan("fedadam", 0, SITES, 1, None, {"server_lr": 1, "fraction": 1}, rounds=1)
    assert plan.server_lr == 1.0 and isinstance(plan.server_lr, float)


def test_a_wrong_option_type_in_an_experiment_file_names_plan_and_key():
    from fedseg.experiment import ConfigError, parse_experiment

    data = {"task": {"labels": {"background": 0, "organ": 1}}, "sites": [{"name": "a", "path": "/a"}],
            "plan": {"name": "fedavg", "min_sites": 1.5}}
    with pytest.raises(ConfigError, match=r"\[plan\] min_sites = 1.5 has the wrong type; expected a whole number"):
        parse_experiment(data)


# --- configure_train is a pure function of (round, sites) and the plan's state -----------------
PURE = {name: (lambda name=name: build_plan(name, 5, SITES, 1, None, options, rounds=4))
        for name, options in [("fedavg", {"fraction": 0.6}), ("fedprox", {"proximal_mu": 0.1}),
                              ("fedadam", {"aggregator": "median"}), ("fedyogi", {"aggregator": "clipped_mean"}),
                              ("fedadagrad", {"fraction": 0.4}), ("cyclic", {"order": "shuffled"}),
                              ("single_transfer", {})]}


@pytest.mark.parametrize("make_plan", PURE.values(), ids=PURE.keys())
def test_configure_train_changes_nothing_and_depends_only_on_round_and_sites(make_plan):
    """A progress display may ask who trains in any round, as often as it likes, without effect."""
    start = {"conv.weight": np.zeros(3), "bn.num_batches_tracked": np.array(0)}
    fresh = make_plan()
    expected = [fresh.configure_train(r, SITES) for r in range(fresh.total_rounds)]
    plan = make_plan()
    weights = start
    for round in range(plan.total_rounds):
        state = repr(plan.state_dict())
        asked = [plan.configure_train(r, SITES) for r in reversed(range(plan.total_rounds))][::-1]
        assert asked == expected and repr(plan.state_dict()) == state
        weights = plan.aggregate_train(round, weights, fake_updates(plan.configure_train(round, SITES), weights))
    assert [plan.configure_train(r, SITES) for r in range(plan.total_rounds)] == expected
