"""Round checkpoints keep a plan's state, numpy arrays included, bit for bit."""

import json

import numpy as np
import pytest
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
    updates = {s: Update({k: np.asarray(v + rng.normal(size=v.shape).astype(v.dtype) if v.dtype.kind == "f"
                                        else v + 1) for k, v in model.items()}, 3) for s in "ab"}
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


# --- damaged checkpoints on resume (issue 8, finding 8) ---------------------------------------

def three_rounds(tmp_path) -> RunDirectory:
    directory = run_dir(tmp_path)
    for round in range(3):
        directory.save_round(round, {"w": np.full(2, round, dtype=np.float32)}, {"round_seen": round})
    return directory


def damage(path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"\x80\x02garbage" * 9,
                      "other round": path.with_name("global_round_000.pt").read_bytes()}[how])


@pytest.mark.parametrize("how", ["empty", "truncated", "garbage", "other round"])
def test_an_unreadable_newest_checkpoint_falls_back_to_the_one_before_with_a_warning(tmp_path, how):
    directory = three_rounds(tmp_path)
    damage(directory.checkpoints / "global_round_002.pt", how)

    with pytest.warns(UserWarning) as caught:
        round, weights, state = directory.last_round()

    assert (round, state) == (1, {"round_seen": 1}) and np.array_equal(weights["w"], [1, 1])
    (message,) = [str(w.message) for w in caught]
    assert f"unreadable checkpoint(s) in {directory.checkpoints}: global_round_002.pt (" in message
    assert "resuming after round 1 from global_round_001.pt" in message


def test_several_unreadable_checkpoints_are_all_named(tmp_path):
    directory = three_rounds(tmp_path)
    damage(directory.checkpoints / "global_round_002.pt", "empty")
    damage(directory.checkpoints / "global_round_001.pt", "truncated")
    with pytest.warns(UserWarning, match=r"global_round_002.pt \(empty file\); global_round_001.pt \("):
        assert directory.last_round()[0] == 0


def test_no_readable_checkpoint_means_starting_again_and_saying_so(tmp_path):
    directory = three_rounds(tmp_path)
    for round in range(3):
        damage(directory.checkpoints / f"global_round_{round:03d}.pt", "empty")
    with pytest.warns(UserWarning, match="no readable checkpoint .* starts again from round 0"):
        assert directory.last_round() is None


def test_an_unreadable_final_model_is_made_again(tmp_path):
    directory = run_dir(tmp_path)
    directory.save_model("FL_global", {"w": np.ones(2, dtype=np.float32)})
    assert np.array_equal(directory.load_model("FL_global")["w"], np.ones(2))
    assert directory.load_model("standalone_a") is None  # never saved
    (directory.checkpoints / "FL_global.pt").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"FL_global.pt is unreadable \(empty file\); it is made again"):
        assert directory.load_model("FL_global") is None
