"""Many sites in one simulation: the site trainers of a process share one network per kind
(``training.networks``), with results bit for bit those of a network per site, and the progress
lines of a deployed run summarise many sites instead of naming each."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedseg.arms import ArmRunner
from fedseg.console import LISTED_SITES, round_line, running_line
from fedseg.data.synthetic import DEMO_SITES, write_site
from fedseg.experiment import parse_experiment
from fedseg.models.registry import ModelConfig
from fedseg.privacy.config import PrivacyConfig
from fedseg.runtime.run_directory import RunDirectory
from fedseg.study import initial_weights, load_sites
from fedseg.training import networks
from fedseg.training.config import TrainingConfig
from fedseg.training.networks import NetworkPool
from fedseg.training.trainer import SiteTrainer
from fedseg.types import RoundConfig

MODEL = ModelConfig("UNet", (4, 8), num_res_units=0)
TRAINING = TrainingConfig(lr=1e-2, batch_size=2, local_steps=2, validate_local=False)


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture
def two_sites(png_site, task_2d, build_dataset):
    """The same 6 cases split two ways: two sites with different training cases."""
    return [build_dataset(png_site.root, task_2d, (0.5, 0.0, 0.5), seed=seed) for seed in (0, 1)]


def test_trainers_sharing_a_network_answer_as_with_a_network_each(two_sites):
    """Every verb loads its own weights first: what another site left in the network changes nothing."""
    pool = NetworkPool()
    a, b = (SiteTrainer(data, MODEL, TRAINING, networks=pool) for data in two_sites)
    alone_a, alone_b = (SiteTrainer(data, MODEL, TRAINING) for data in two_sites)
    assert a.network is b.network and pool.built == 1 and alone_a.network is not a.network
    start = alone_a.weights()
    first = a.evaluate(start)
    trained = b.train(start, RoundConfig(round=0, seed=3))  # leaves b's model in the shared network
    assert repr(a.evaluate(start)) == repr(first) == repr(alone_a.evaluate(start))  # repr: NaN distances
    assert a.case_losses(start, "train") == alone_a.case_losses(start, "train")
    assert same(trained.weights, alone_b.train(start, RoundConfig(round=0, seed=3)).weights)
    assert same(a.fine_tune(trained.weights, 1, seed=5).weights, alone_a.fine_tune(trained.weights, 1, seed=5).weights)


def test_a_kept_optimizer_read_back_from_its_file_trains_as_one_kept_in_memory(two_sites, tmp_path):
    keep = dataclasses.replace(TRAINING, optimizer_state="keep")
    on_disk = SiteTrainer(two_sites[0], MODEL, keep, state_dir=tmp_path)
    in_memory = SiteTrainer(two_sites[0], MODEL, keep)
    weights = disk_weights = in_memory.weights()
    for round in range(3):
        disk_weights = on_disk.train(disk_weights, RoundConfig(round=round, seed=round)).weights
        weights = in_memory.train(weights, RoundConfig(round=round, seed=round)).weights
        assert on_disk._optimizer is None and in_memory._optimizer is not None  # no moments in memory per site
    assert same(disk_weights, weights)


def test_dp_sites_share_one_network_with_opacus_hooks_added_once(two_sites, tmp_path):
    pool, privacy = NetworkPool(), PrivacyConfig(dp="sample", epsilon=4.0, max_grad_norm=1.0)

    def trainer(data, state, networks=None):
        return SiteTrainer(data, MODEL, TRAINING, state_dir=tmp_path / state, privacy=privacy, dp_trainings=2,
                           networks=networks)

    shared = [trainer(data, f"shared{i}", pool) for i, data in enumerate(two_sites)]
    alone = [trainer(data, f"alone{i}") for i, data in enumerate(two_sites)]
    plain = SiteTrainer(two_sites[0], MODEL, TRAINING, networks=pool)
    assert shared[0].network is shared[1].network is not plain.network and pool.built == 2  # DP: a kind of its own
    for i in (0, 1):  # the same secret at each site's two trainers: the same noise
        assert shared[i].private is not None
        (tmp_path / f"alone{i}").mkdir(exist_ok=True)
        (tmp_path / f"alone{i}" / "dp_secret").write_bytes((tmp_path / f"shared{i}" / "dp_secret").read_bytes())
        assert alone[i].private is not None
    start = plain.weights()
    for round in range(2):
        updates = [t.train(start, RoundConfig(round=round, seed=round)).weights for t in shared]
        again = [t.train(start, RoundConfig(round=round, seed=round)).weights for t in alone]
        assert all(same(u, v) for u, v in zip(updates, again))


def study(root, n_sites: int):
    sites = []
    for i in range(n_sites):
        style = dataclasses.replace(DEMO_SITES[i % len(DEMO_SITES)], name=f"site{i:02d}")
        sites.append({"name": style.name, "path": str(write_site(root / "data" / style.name, style, 5, 16, i))})
    return parse_experiment({
        "name": "many", "seed": 3, "arms": ["federated", "standalone", "centralized"],
        "task": {"labels": {"background": 0, "lesion": 1}, "spatial_dims": 2},
        "sites": sites, "splits": {"train": 0.6, "val": 0.2, "test": 0.2},
        "model": {"name": "UNet", "channels": [4, 8], "num_res_units": 0},
        "training": {"loss": "dice_ce", "lr": 1e-2, "batch_size": 2, "local_steps": 1, "device": "cpu",
                     "optimizer_state": "keep"},
        "federation": {"rounds": 2, "fine_tune_epochs": 1},
    })


def all_arms(experiment, out):
    run_dir = RunDirectory(out)
    run_dir.create()
    runner = ArmRunner(experiment, load_sites(experiment), run_dir, initial_weights(experiment))
    models = runner.federated(experiment.compute_plan)
    return {**models, **runner.standalone(), **runner.centralized()}


class OwnNetworks(NetworkPool):
    """The old way: a new network for every trainer."""

    def network(self, *args, **kwargs):
        return NetworkPool().network(*args, **kwargs)


def test_every_arm_of_many_sites_builds_a_constant_number_of_networks_and_the_same_models(tmp_path, monkeypatch):
    built = []
    original = networks.build_network
    monkeypatch.setattr(networks, "build_network", lambda *args: built.append(args) or original(*args))

    def networks_built(*args):
        before = len(built)
        return all_arms(*args), len(built) - before

    small = study(tmp_path / "small", 2)
    shared, few = networks_built(small, tmp_path / "shared")
    models, many = networks_built(study(tmp_path / "many", 12), tmp_path / "many_run")
    assert len(models) == 1 + 12 + 12 + 1  # FL_global, FL_local, standalone, centralized
    # the initial weights' and, per arm at most, the shared one (a pool holds it while trainers use it)
    assert few <= 4 and many <= 4
    monkeypatch.setattr(networks, "SHARED", OwnNetworks())
    own, old_way = networks_built(small, tmp_path / "own")
    assert old_way == 1 + 2 + 2 + 1  # initial weights, 2 federated and 2 standalone apps, the centralized one
    assert own.keys() == shared.keys() and all(same(own[name], shared[name]) for name in own)


def test_few_sites_are_listed_and_many_are_summarised():
    records = [{"site": f"s{i:03d}", "train_loss": i / 100, "seconds": 1.0 + (i == 42)} for i in range(100)]
    records[7]["rejected"] = "NaN in its update"
    assert round_line({"round": 0, "rounds": 2, "last": records[:2]}) == "round 1/2 done: s000 0.000, s001 0.010"
    line = round_line({"round": 0, "rounds": 2, "last": records})
    assert line == ("round 1/2 done: 100 sites; loss min 0.000, median 0.500, max 0.990 (s099); slowest s042 2.0 s; "
                    "1 rejected: s007")
    states = {f"s{i:03d}": "trained" if i > 3 else "training" for i in range(100)}
    assert running_line({"current": {"round": 4, "started": 10.0, "sites": states}}, 70.0) == (
        "round 5 running for 60 s: 100 sites, 96 trained, 4 training (not done: s000, s001, s002 and 1 more)")


@given(st.lists(st.dictionaries(st.sampled_from(["site", "train_loss", "seconds", "rejected"]),
                                st.one_of(st.text(max_size=5), st.floats(), st.integers(), st.none())), max_size=20),
       st.dictionaries(st.text(max_size=5), st.text(max_size=8), max_size=20))
def test_progress_lines_take_any_records(records, states):
    """A progress file is read back from disk: odd values give a line, never an exception; many
    sites never give more than a few names."""
    line = round_line({"round": 0, "rounds": 1, "last": records})
    running = running_line({"current": {"round": 0, "sites": states}}, 0.0)
    assert line.startswith("round 1/1 done") and running.startswith("round 1 running")
    if len(states) > LISTED_SITES:
        assert running.count(",") <= 3 + len(set(states.values()))
