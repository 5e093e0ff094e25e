"""The experiment file: defaults, path resolution, and errors that say where and what."""

import math
import subprocess
import sys

import pytest
import tomli_w

from fedseg.experiment import ConfigError, load_experiment, parse_experiment

MINIMAL = {
    "task": {"labels": {"background": 0, "organ": 1}, "spatial_dims": 3},
    "sites": [{"name": "a", "path": "data/a"}, {"name": "b", "path": "/abs/b", "shard": [1, 3]}],
}


def write(tmp_path, data, name="exp.toml"):
    path = tmp_path / name
    path.write_text(tomli_w.dumps(data))
    return path


def test_minimal_file_gets_defaults_and_paths_relative_to_the_file(tmp_path):
    experiment = load_experiment(write(tmp_path, MINIMAL))
    assert experiment.name == "exp" and experiment.seed == 0
    assert experiment.sites[0].path == (tmp_path / "data" / "a").resolve()
    assert str(experiment.sites[1].path) == "/abs/b" and experiment.sites[1].shard == (1, 3)
    assert experiment.plan == {"name": "fedavg"} and experiment.training.loss == "dice_ce"
    assert experiment.task.class_names == ["background", "organ"]


def test_resolved_experiment_round_trips_through_toml(tmp_path):
    data = {**MINIMAL, "preprocessing": {"intensity": "clip_rescale", "clip": [-200, 250],
                                         "patch_size": [32, 32, 16], "spacing": [1.5, 1.5, 2.0]}}
    experiment = load_experiment(write(tmp_path, data))
    again = load_experiment(write(tmp_path, experiment.to_dict(), "resolved.toml"))
    assert again == experiment
    assert again.preprocessing.patch_size == (32, 32, 16) and again.preprocessing.clip == (-200, 250)


@pytest.mark.parametrize("change, message", [
    ({"epochs": 3}, "unknown top-level key(s) ['epochs']"),
    ({"training": {"learning_rate": 0.1}}, "[training] unknown key(s) ['learning_rate']"),
    ({"training": {"lr": "fast"}}, "[training] lr = 'fast' has the wrong type"),
    ({"training": {"loss": "focal"}}, "training.loss must be one of"),
    ({"federation": {"rounds": 0}}, "rounds must be >= 1"),
    ({"plan": {"name": "magic"}}, "[plan] plan must be one of"),
    ({"plan": {"name": "fedavg", "proximal_mu": 0.1}}, "[plan] unknown option 'proximal_mu' for plan 'fedavg'"),
    ({"plan": {"name": "cyclic", "cycles": 2}}, "cycles is set by [federation] rounds"),
    ({"plan": {"name": "fedavg", "min_sites": 3}}, "min_sites is 3 but only 2 site(s)"),
    ({"plan": {"name": "fedavg", "weighted_by": "val_loss"}}, "weighted_by must be one of"),
    ({"model": {"name": "ViT"}}, "model.name must be one of"),
    ({"preprocessing": {"intensity": "clip_rescale"}}, "preprocessing.clip must be [lower, upper]"),
    ({"preprocessing": {"patch_size": [32, 32]}}, "patch_size has 2 values but the task is 3D"),
    ({"splits": {"train": 0.9, "val": 0.2, "test": 0.1}}, "add up to 1"),
    ({"task": {"labels": {"organ": 1}}}, "background class to 0"),
    ({"sites": []}, "no sites"),
    ({"sites": [{"name": "a"}]}, "needs name and path"),
    ({"sites": [{"name": "a", "path": "x", "shard": [3, 3]}]}, "shard must be [index, count]"),
    ({"sites": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]}, "site names must be unique"),
    ({"seed": "seven"}, "seed must be an integer"),
    # issue 8, finding 7: names become folders
    ({"name": "../../../x"}, "top-level name '../../../x' is not a valid name"),
    ({"sites": [{"name": "x/../../../../ESCAPED", "path": "x"}]},
     "[[sites]] #1 name 'x/../../../../ESCAPED' is not a valid name"),
    ({"sites": [{"name": "", "path": "x"}]}, "[[sites]] #1 name '' is not a valid name"),
    ({"sites": [{"name": "a", "path": "x"}, {"name": "A", "path": "y"}]}, "unique, also ignoring case"),
    # issue 8, finding 8: tracebacks and silently accepted values
    ({"training": {"device": "tpu"}}, "[training] training.device must be 'cpu', 'cuda' or 'cuda:N'"),
    ({"model": {"norm": "bogus"}}, "[model] model.norm must be one of ('instance', 'batch'), got 'bogus'"),
    ({"training": {"lr": math.nan}}, "[training] lr = nan is not a finite number"),
    ({"training": {"lr": math.inf}}, "[training] lr = inf is not a finite number"),
    ({"plan": {"name": "fedavg", "fraction": math.nan}}, "[plan] fraction = nan is not a finite number"),
    ({"preprocessing": {"clip": [-math.inf, 250.0]}}, "[preprocessing] clip[0] = -inf is not a finite number"),
    ({"preprocessing": {"patch_size": [0, 0, 0]}}, "preprocessing.patch_size: each size (voxels) must be within"),
    ({"preprocessing": {"spatial_size": [-4, 32, 32]}}, "preprocessing.spatial_size: each size (voxels)"),
    ({"preprocessing": {"percentiles": [99.5, 0.5]}}, "preprocessing.percentiles must be [lower, upper]"),
    ({"training": {"sw_overlap": 5.0}}, "[training] training.sw_overlap must be a finite number within [0, 1)"),
    ({"training": {"sw_batch_size": 0}}, "[training] training.sw_batch_size must be >= 1, got 0"),
    ({"preprocessing": {"patch_size": [30, 32, 32]}}, "patch_size [30, 32, 32] does not fit the UNet"),
    ({"preprocessing": {"patch_size": [8, 8, 8]}}, "give multiples of 8 that leave more than one voxel"),
    ({"preprocessing": {"spatial_size": [4, 4, 4]}}, "spatial_size (padded to the model's factor) [8, 8, 8]"),
    ({"seed": -1}, "seed must be an integer from 0 to 4294967295, got -1"),
    ({"seed": True}, "seed must be an integer"),
    ({"arms": [["federated"]]}, "arms must be a non-empty list of distinct values"),
    ({"sites": [{"name": "a", "path": "a\0b"}]}, "[[sites]] #1 path = 'a\\x00b' must be the path of the site's"),
    ({"sites": [{"name": "a", "path": 3}]}, "[[sites]] #1 path = 3 must be the path"),
    ({"sites": [{"name": "a", "path": "~no_such_user_fedseg/x"}]}, "[[sites]] #1 path = '~no_such_user_fedseg/x' cannot"),
    ({"sites": [{"name": "a", "path": "x", "shard": [False, True]}]}, "shard must be [index, count]"),
    ({"training": {"batch_size": 2**63}}, "[training] batch_size = 9223372036854775808 is out of range"),
    # issue 10: bad privacy settings say what to do
    ({"privacy": {"dp": "sample"}}, "needs a target privacy.epsilon (e.g. epsilon = 8)"),
    ({"privacy": {"dp": "sample", "epsilon": 0}}, "privacy.epsilon must be > 0, got 0"),
    ({"privacy": {"dp": "sample", "epsilon": -1.0}}, "privacy.epsilon must be a finite number > 0, got -1.0"),
    ({"privacy": {"dp": "sample", "epsilon": 8, "delta": 1.0}}, "privacy.delta must be a finite number within (0, 1), got 1.0"),
    ({"privacy": {"dp": "sample", "epsilon": 8, "max_grad_norm": 0}}, "privacy.max_grad_norm must be > 0"),
    ({"privacy": {"dp": "laplace", "epsilon": 8}}, "privacy.dp must be one of ('off', 'sample', 'client')"),
    ({"privacy": {"epsilon": 8}}, "privacy.epsilon is set but privacy.dp is 'off'"),
    ({"privacy": {"dp": "client", "epsilon": 8}}, "needs privacy.clip, the L2 bound"),
    ({"privacy": {"dp": "client", "epsilon": 8, "clip": 1.0, "delta": 0.6},
      "plan": {"name": "fedavg", "weighted_by": "uniform"}}, "below 1 / (number of sites) = 0.5"),
    ({"privacy": {"dp": "client", "epsilon": 8, "clip": 1.0}}, "needs [plan] weighted_by = \"uniform\""),
    ({"privacy": {"dp": "client", "epsilon": 8, "clip": 1.0}, "plan": {"name": "cyclic"}},
     "needs a plan that averages the sites' updates"),
    ({"privacy": {"secure_aggregation": True}}, "set [guard] norm_action = \"off\""),
    ({"privacy": {"secure_aggregation": True}, "guard": {"norm_action": "off"},
      "plan": {"name": "fedavg", "aggregator": "median"}}, "needs aggregator = \"mean\""),
    ({"privacy": {"secure_aggregation": True}, "guard": {"norm_action": "off"}, "plan": {"name": "single_transfer"}},
     "privacy.secure_aggregation needs a plan that averages"),
    ({"privacy": {"secure_aggregation": True, "homomorphic": True}}, "choose one of privacy.secure_aggregation"),
    ({"privacy": {"dp": "sample", "epsilon": 8}, "model": {"norm": "batch"}}, "cannot train batch norm"),
    ({"privacy": {"dp": "sample", "epsilon": 8}, "model": {"name": "SegResNet"}}, "set [model] name = \"UNet\""),
])
def test_mistakes_name_the_file_section_and_key(tmp_path, change, message):
    path = write(tmp_path, {**MINIMAL, **change})
    with pytest.raises(ConfigError) as error:
        load_experiment(path)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_missing_task_and_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"missing \[task\] section"):
        parse_experiment({"sites": MINIMAL["sites"]})
    broken = tmp_path / "broken.toml"
    broken.write_text("[task\nlabels = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_experiment(broken)
    with pytest.raises(ConfigError, match="experiment file not found"):
        load_experiment(tmp_path / "nope.toml")


def test_the_message_for_a_bad_name_shows_a_valid_one(tmp_path):
    with pytest.raises(ConfigError, match=r"letters, digits, '_' or '-'.*e\.g\. 'hospital_a'"):
        load_experiment(write(tmp_path, {**MINIMAL, "sites": [{"name": "a b", "path": "x"}]}))
    with pytest.raises(ConfigError, match="e.g. 'hippocampus_fedavg'"):
        load_experiment(write(tmp_path, {**MINIMAL, "name": "."}))
    # without a name, the file's stem names the run; a stem that cannot gets a suggestion
    with pytest.raises(ConfigError, match=r"the file name 'my exp\.v2' .* name = \"my_exp_v2\""):
        load_experiment(write(tmp_path, MINIMAL, "my exp.v2.toml"))


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe\x00\x01binary", "not a text TOML file (byte 0xff at offset 0 is not UTF-8)"),
    (b"name = \"caf\xe9\"\n", "not a text TOML file"),
    (b"a = " + b"[" * 5000, "nested too deeply"),
    (b"x = 1" + b" " * (1 << 20), "bytes is too large (the experiment file may have at most 1048576 bytes)"),
])
def test_a_file_that_is_not_a_text_toml_file_is_a_config_error(tmp_path, content, message):
    path = tmp_path / "exp.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as error:
        load_experiment(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_a_folder_is_not_an_experiment_file(tmp_path):
    with pytest.raises(ConfigError, match="is a folder; give the path of the experiment file"):
        load_experiment(tmp_path)


def test_reading_an_experiment_file_imports_neither_torch_nor_monai(tmp_path):
    path = write(tmp_path, {**MINIMAL, "preprocessing": {"patch_size": [32, 32, 16]}, "model": {"name": "SegResNet"},
                            "plan": {"name": "fedprox", "proximal_mu": 0.01}})
    code = ("import sys, fedseg.experiment as e; x = e.load_experiment(sys.argv[1]); x.compute_plan(); "
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'monai'}); "
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
