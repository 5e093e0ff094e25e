"""Plans take updates one at a time, as a deployment coordinator receives them."""

import numpy as np
import pytest

from fedseg.plans.registry import build_plan
from fedseg.types import Update


def updates(n_sites=4, seed=0):
    rng = np.random.default_rng(seed)
    return {f"site{i}": Update({"w": rng.normal(size=(3, 3)).astype(np.float32), "n": np.array(i, dtype=np.int64)},
                               n_samples=i + 1, metrics={"val_dice": 0.5 + 0.1 * i}) for i in range(n_sites)}


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedadam"])
def test_streaming_in_any_arrival_order_matches_batch_aggregation(name):
    sites = list(updates())
    start = {"w": np.zeros((3, 3), np.float32), "n": np.array(0, dtype=np.int64)}
    batch = build_plan(name, 1, sites, 1, None, {}, rounds=1).aggregate_train(0, start, updates())
    streaming_plan = build_plan(name, 1, sites, 1, None, {}, rounds=1)
    aggregation = streaming_plan.aggregation(0, start)
    for site in reversed(sites):  # arrival order differs from the sorted batch order
        aggregation.add(site, updates()[site])
    streamed = aggregation.result()
    np.testing.assert_allclose(streamed["w"], batch["w"], rtol=1e-6)
    assert streamed["n"] == batch["n"]
    assert streaming_plan.round_summary()["aggregation_weights"]["site3"] == pytest.approx(4 / 10)


def test_cyclic_collects_its_single_update():
    plan = build_plan("cyclic", 1, ["a", "b"], 1, None, {}, rounds=1)
    aggregation = plan.aggregation(1, {"w": np.zeros(2)})  # round 1 visits "b"
    aggregation.add("b", Update({"w": np.ones(2)}, 1))
    np.testing.assert_array_equal(aggregation.result()["w"], np.ones(2))
    assert plan.round_summary()["visited"] == "b"


def test_streaming_memory_does_not_grow_with_the_number_of_sites():
    """Peak traced memory while folding in 24 updates, each made, added and dropped in turn as the
    coordinator's result callback does: a few models, not one per site."""
    import tracemalloc

    shape, n_sites = (256, 1024), 24  # 1 MiB per float32 update
    plan = build_plan("fedavg", 1, [f"s{i}" for i in range(n_sites)], 1, None, {}, rounds=1)
    start = {"w": np.zeros(shape, np.float32)}
    model_bytes = start["w"].nbytes
    tracemalloc.start()
    aggregation = plan.aggregation(0, start)
    for i in range(n_sites):
        aggregation.add(f"s{i}", Update({"w": np.full(shape, i, np.float32)}, n_samples=1))
    result = aggregation.result()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert result["w"][0, 0] == pytest.approx(np.mean(range(n_sites)))
    assert peak < 6 * model_bytes, f"peak {peak / model_bytes:.1f} models for {n_sites} sites"
