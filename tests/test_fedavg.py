"""FedAvg and weighted averaging as pure numpy code: no training involved."""

import numpy as np
import pytest

from fedseg.plans.averaging import RunningAverage
from fedseg.plans.checks import UpdateRejected
from fedseg.plans.fedavg import FedAvg
from fedseg.types import Update


def weights(value: float, count: int = 0) -> dict:
    return {"conv.weight": np.full((2, 3), value, dtype=np.float32),
            "norm.num_batches_tracked": np.array(count, dtype=np.int64)}


def test_fedavg_weights_by_training_samples():
    plan = FedAvg(seed=0)
    updates = {"a": Update(weights(1.0, 10), n_samples=30), "b": Update(weights(5.0, 20), n_samples=10)}
    result = plan.aggregate_train(0, weights(0.0), updates)
    np.testing.assert_allclose(result["conv.weight"], 2.0)  # (1*30 + 5*10) / 40
    assert result["conv.weight"].dtype == np.float32
    assert result["norm.num_batches_tracked"] == 12  # rint(12.5) -> 12, kept an integer
    assert result["norm.num_batches_tracked"].dtype == np.int64


def test_fedavg_uniform_ignores_sample_counts():
    plan = FedAvg(seed=0, weighted_by="uniform")
    updates = {"a": Update(weights(1.0), n_samples=30), "b": Update(weights(5.0), n_samples=10)}
    np.testing.assert_allclose(plan.aggregate_train(0, weights(0.0), updates)["conv.weight"], 3.0)


def test_fedavg_result_does_not_depend_on_arrival_order():
    rng = np.random.default_rng(0)
    updates = {s: Update({"w": rng.normal(size=100).astype(np.float32)}, n_samples=int(rng.integers(1, 50)))
               for s in "abcde"}
    plan, start = FedAvg(seed=0), {"w": np.zeros(100, dtype=np.float32)}
    forward = plan.aggregate_train(0, start, updates)
    backward = plan.aggregate_train(0, start, dict(reversed(list(updates.items()))))
    assert np.array_equal(forward["w"], backward["w"])


def test_configure_train_gives_every_site_a_distinct_reproducible_seed():
    plan = FedAvg(seed=3, local_epochs=2)
    first = plan.configure_train(0, ["a", "b"])
    assert first == FedAvg(seed=3, local_epochs=2).configure_train(0, ["a", "b"])
    assert first["a"].seed != first["b"].seed
    assert first["a"].seed != plan.configure_train(1, ["a", "b"])["a"].seed
    assert first["a"].local_epochs == 2 and first["a"].round == 0


def test_running_average_rejects_mismatched_updates():
    average = RunningAverage({"w": np.zeros(3)})
    average.add({"w": np.ones(3)}, 1.0)
    with pytest.raises(UpdateRejected, match=r"shape \(4,\), expected \(3,\)"):
        average.add({"w": np.zeros(4)}, 1.0)
    with pytest.raises(UpdateRejected, match="missing 'w'; unexpected 'v'"):
        average.add({"v": np.zeros(3)}, 1.0)
    with pytest.raises(UpdateRejected, match=">= 0"):
        average.add({"w": np.zeros(3)}, -1.0)
    assert average.total == 1.0 and np.array_equal(average.result()["w"], np.ones(3))


def test_average_of_nothing_is_an_error():
    average = RunningAverage({"w": np.zeros(2)})
    average.add({"w": np.ones(2)}, 0.0)  # a zero weight leaves an update out
    with pytest.raises(ValueError, match="nothing to average"):
        average.result()


def test_unknown_weighting_is_rejected():
    with pytest.raises(ValueError, match="weighted_by"):
        FedAvg(seed=0, weighted_by="val_loss")
