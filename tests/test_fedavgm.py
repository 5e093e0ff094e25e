"""FedAvgM (Hsu et al. 2019) against a numpy reference written here, its state across a restart,
its options in the registry and with the privacy mechanisms that serve averaging plans."""

import numpy as np
import pytest

from fedseg.plans.fedavg import FedAvg
from fedseg.plans.fedopt import FedAvgM
from fedseg.plans.registry import build_plan
from fedseg.privacy.config import PrivacyConfig
from fedseg.runtime.run_directory import RunDirectory
from fedseg.types import Update

SITES = ["a", "b", "c", "d"]
START = {"w": np.array([[0.5, -1.0, 2.0], [0.0, 3.0, -0.25]]), "b": np.array(0.75),
         "count": np.array(10, dtype=np.int64)}
CASES = {"a": 3, "b": 5, "c": 1, "d": 7}


def site_updates(round: int, global_weights, sites):
    """Each chosen site's update: the global model moved by seeded noise, its counter advanced."""
    updates = {}
    for site in sites:
        rng = np.random.default_rng([round, ord(site)])
        weights = {k: np.asarray(v + rng.normal(size=v.shape)) for k, v in global_weights.items() if k != "count"}
        updates[site] = Update({**weights, "count": np.asarray(global_weights["count"] + CASES[site])}, CASES[site])
    return updates


def run(plan, rounds, weights=START, start=0):
    for round in range(start, rounds):
        chosen = plan.configure_train(round, SITES)
        weights = plan.aggregate_train(round, weights, site_updates(round, weights, sorted(chosen)))
    return weights


def reference(rounds, server_lr, momentum, chosen_by):
    """Hsu et al.: v = momentum * v + (x - weighted mean), x = x - server_lr * v; the counter is the mean, rounded."""
    x, count = {k: START[k].copy() for k in ("w", "b")}, START["count"]
    v = {k: np.zeros_like(x[k]) for k in x}
    for round in range(rounds):
        updates = site_updates(round, {**x, "count": count}, sorted(chosen_by(round)))
        total = sum(u.n_samples for u in updates.values())
        mean = {k: sum(u.n_samples * np.asarray(u.weights[k], np.float64) for u in updates.values()) / total
                for k in START}
        for k in x:
            v[k] = momentum * v[k] + (x[k] - mean[k])
            x[k] = x[k] - server_lr * v[k]
        count = np.rint(mean["count"]).astype(np.int64)
    return {**x, "count": count}


def test_three_rounds_with_partial_participation_match_the_numpy_reference():
    plan = FedAvgM(seed=3, server_lr=0.7, server_momentum=0.8, fraction=0.5, rounds=3)
    chosen = [sorted(plan.configure_train(r, SITES)) for r in range(3)]
    assert all(len(c) == 2 for c in chosen) and len({tuple(c) for c in chosen}) > 1
    got = run(plan, 3)
    expected = reference(3, 0.7, 0.8, lambda r: chosen[r])
    for key in ("w", "b"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-12, atol=1e-12)
        assert got[key].dtype == START[key].dtype
    assert got["count"] == expected["count"] and got["count"].dtype == np.int64
    assert plan.name == "fedavgm" and set(plan.state_dict()["m"]) == {"w", "b"} and plan.state_dict()["v"] == {}


def test_momentum_carries_over_rounds_and_zero_momentum_at_server_lr_one_is_fedavg():
    with_momentum = run(FedAvgM(seed=1, rounds=2), 2)
    without = run(FedAvgM(seed=1, server_momentum=0.0, rounds=2), 2)
    fedavg = run(FedAvg(seed=1, rounds=2), 2)
    np.testing.assert_allclose(without["w"], fedavg["w"], rtol=1e-12)
    assert not np.allclose(with_momentum["w"], fedavg["w"])
    first = run(FedAvgM(seed=1, rounds=1), 1)  # round one: m = g, so the step is FedAvg's
    np.testing.assert_allclose(first["w"], run(FedAvg(seed=1, rounds=1), 1)["w"], rtol=1e-12)


def test_a_restart_from_the_checkpointed_state_continues_bit_for_bit(tmp_path):
    straight = run(FedAvgM(seed=5, server_lr=0.5, fraction=0.75, rounds=3), 3)
    first = FedAvgM(seed=5, server_lr=0.5, fraction=0.75, rounds=3)
    after_one = run(first, 1)
    run_dir = RunDirectory(tmp_path)
    run_dir.create()
    run_dir.save_round(0, after_one, first.state_dict())
    _, weights, state = run_dir.last_round()
    resumed = FedAvgM(seed=5, server_lr=0.5, fraction=0.75, rounds=3)
    resumed.load_state_dict(state)
    continued = run(resumed, 3, weights, start=1)
    for key in START:
        assert continued[key].tobytes() == straight[key].tobytes(), key


def test_registry_builds_fedavgm_with_its_defaults_and_checks_its_options():
    plan = build_plan("fedavgm", 0, SITES, 1, None, {}, rounds=4)
    assert isinstance(plan, FedAvgM) and (plan.server_lr, plan.beta1, plan.total_rounds) == (1.0, 0.9, 4)
    plan = build_plan("fedavgm", 0, SITES, 1, None, {"server_lr": 2, "server_momentum": 0.5,
                                                    "weighted_by": "uniform"}, rounds=1)
    assert (plan.server_lr, plan.beta1) == (2.0, 0.5)
    with pytest.raises(ValueError, match=r"server_momentum must be in \[0, 1\), got 1.0"):
        build_plan("fedavgm", 0, SITES, 1, None, {"server_momentum": 1.0}, rounds=1)
    with pytest.raises(ValueError, match="server_lr is out of range"):
        build_plan("fedavgm", 0, SITES, 1, None, {"server_lr": 0}, rounds=1)
    with pytest.raises(ValueError, match="unknown option 'beta2' for plan 'fedavgm'"):
        build_plan("fedavgm", 0, SITES, 1, None, {"beta2": 0.9}, rounds=1)


def test_fedavgm_is_an_averaging_plan_for_client_dp_and_secure_sums():
    PrivacyConfig(dp="client", epsilon=8, clip=1.0, delta=1e-3).check_with(
        "fedavgm", {"weighted_by": "uniform"}, "reject", "instance", 4)
    PrivacyConfig(secure_aggregation=True).check_with("fedavgm", {}, "off", "instance", 4)
