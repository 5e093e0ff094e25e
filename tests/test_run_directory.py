"""Round checkpoints keep a plan's state, numpy arrays included, bit for bit."""

import json

import numpy as np
import torch

from fedseg.plans.fedopt import FedOpt
from fedseg.runtime.run_directory import RunDirectory
from fedseg.types import Update


def run_dir(tmp_path) -> RunDirectory:
    directory = RunDirectory(tmp_path)
    directory.create()
    return directory


def test_fedopt_state_survives_a_checkpoint_bit_exactly(tmp_path):
    plan = FedOpt(seed=0, optimizer="yogi", server_lr=0.1)
    rng = np.random.default_rng(0)
    model = {"w": rng.normal(size=(3, 4)).astype(np.float32), "scale": np.array(0.5, dtype=np.float32),
             "bn.num_batches_tracked": np.array(7, dtype=np.int64)}
    updates = {s: Update({k: v + rng.normal(size=v.shape).astype(v.dtype) if v.dtype.kind == "f" else v + 1
                          for k, v in model.items()}, 3) for s in "ab"}
    model = plan.aggregate_train(0, model, updates)
    state = plan.state_dict()
    directory = run_dir(tmp_path)
    path = directory.save_round(0, model, state)

    round, weights, restored = directory.last_round()
    assert round == 0
    assert restored.keys() == state.keys() == {"m", "v"}
    for part in ("m", "v"):
        assert restored[part].keys() == {"w", "scale"}
        for key, array in state[part].items():
            assert isinstance(restored[part][key], np.ndarray)
            assert restored[part][key].dtype == array.dtype == np.float64
            assert restored[part][key].shape == array.shape
            assert restored[part][key].tobytes() == array.tobytes()
    for key, array in model.items():  # shapes kept, 0-d ones included
        assert weights[key].shape == array.shape and weights[key].tobytes() == array.tobytes()
    assert torch.load(path, weights_only=True)["round"] == 0


def test_nested_state_with_lists_scalars_and_arrays_round_trips(tmp_path):
    state = {"step": 3, "name": "x", "history": [1.5, {"a": np.arange(4, dtype=np.int32)}],
             "nested": {"deep": {"b": np.eye(2)}}, "none": None}
    directory = run_dir(tmp_path)
    directory.save_round(2, {"w": np.zeros(2, dtype=np.float32)}, state)
    _, _, restored = directory.last_round()
    assert restored["step"] == 3 and restored["name"] == "x" and restored["none"] is None
    assert restored["history"][0] == 1.5
    assert np.array_equal(restored["history"][1]["a"], np.arange(4)) and restored["history"][1]["a"].dtype == np.int32
    assert np.array_equal(restored["nested"]["deep"]["b"], np.eye(2))


def test_json_only_state_and_checkpoints_of_older_versions_still_load(tmp_path):
    directory = run_dir(tmp_path)
    directory.save_round(0, {"w": np.ones(2, dtype=np.float32)}, {"counter": 2})
    saved = torch.load(directory.checkpoints / "global_round_000.pt", weights_only=True)
    assert json.loads(saved["plan_state"]) == {"counter": 2} and saved["plan_arrays"] == {}
    # what earlier versions wrote: no "plan_arrays" entry
    torch.save({"round": 1, "model": {"w": torch.zeros(2)}, "plan_state": json.dumps({"counter": 3})},
               directory.checkpoints / "global_round_001.pt")
    round, weights, state = directory.last_round()
    assert (round, state) == (1, {"counter": 3}) and np.array_equal(weights["w"], np.zeros(2))
