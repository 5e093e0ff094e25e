"""Client-level DP (DP-FedAvg): each site's change clipped, Gaussian noise on the mean, the
federation's epsilon accounted round by round, the noise secret yet reproduced on resume."""

import numpy as np
import pytest

from fedseg.plans.client_dp import ClientDP
from fedseg.plans.fedavg import FedAvg
from fedseg.plans.fedopt import FedOpt
from fedseg.privacy import accounting
from fedseg.privacy.accounting import epsilon_spent
from fedseg.types import Update

SIZE = 20_000


def plan_with_dp(clip=1.0, epsilon=4.0, rounds=10, cls=FedAvg, **options):
    plan = cls(seed=0, weighted_by="uniform", rounds=rounds, **options)
    plan.client_dp = ClientDP(clip, epsilon, 1e-3, 1.0, rounds, accounting)
    return plan


def start():
    return {"w": np.zeros(SIZE, dtype=np.float32)}


def test_an_update_far_from_the_global_model_moves_it_no_more_than_the_clip_bound_plus_noise():
    plan = plan_with_dp(epsilon=1e4)  # almost no noise: the clipping alone shows
    huge = {"a": Update({"w": np.full(SIZE, 1e3, np.float32)}, 5), "b": Update({"w": np.zeros(SIZE, np.float32)}, 5)}
    result = plan.aggregate_train(0, start(), huge)
    along_a = float(np.sum(result["w"].astype(np.float64))) / np.sqrt(SIZE)  # the move in a's direction
    assert along_a == pytest.approx(0.5, abs=0.05)  # a's change clipped to 1, averaged with b's 0
    assert plan.round_summary()["clipped_to_dp_bound"] == ["a"]


def test_the_noise_has_the_standard_deviation_of_the_mechanism():
    plan = plan_with_dp(clip=2.0)
    sigma = plan.client_dp.noise_multiplier
    same = {site: Update(start(), 5) for site in "abcd"}
    result = plan.aggregate_train(0, start(), same)["w"].astype(np.float64)
    assert np.std(result) == pytest.approx(sigma * 2.0 / 4, rel=0.03)
    assert abs(np.mean(result)) < 5 * sigma * 2.0 / 4 / np.sqrt(SIZE)


def test_the_epsilon_recorded_each_round_is_the_accountants():
    plan = plan_with_dp(epsilon=4.0, rounds=10)
    for round in range(3):
        plan.aggregate_train(round, start(), {"a": Update(start(), 5), "b": Update(start(), 5)})
        recorded = plan.round_summary()["client_dp"]
        assert recorded["epsilon"] == pytest.approx(epsilon_spent(recorded["noise_multiplier"], 1.0, round + 1, 1e-3))
    assert plan.client_dp.spent(10) == pytest.approx(4.0, rel=0.01)  # the whole run spends the budget


def test_noise_is_secret_but_a_resumed_plan_adds_the_same(tmp_path):
    updates = {"a": Update(start(), 5), "b": Update(start(), 5)}
    first, other = plan_with_dp(cls=FedOpt), plan_with_dp(cls=FedOpt)
    assert not np.array_equal(first.aggregate_train(0, start(), updates)["w"],
                              other.aggregate_train(0, start(), updates)["w"])  # same seed, other secret
    resumed = plan_with_dp(cls=FedOpt)
    resumed.load_state_dict(first.state_dict())
    assert "client_dp_secret" not in first.state_dict()  # checkpoints never hold it: study keeps it apart
    resumed.client_dp.secret = first.client_dp.secret
    assert np.array_equal(first.aggregate_train(1, start(), updates)["w"],
                          resumed.aggregate_train(1, start(), updates)["w"])
