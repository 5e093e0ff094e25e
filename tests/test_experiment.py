"""The experiment file: defaults, path resolution, and errors that say where and what."""

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
