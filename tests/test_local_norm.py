"""FedBN / SiloBN-style local normalisation (``[plan] local_norm = true``): which keys a site keeps,
that it trains from its own, that it keeps them across a restart, and how the models are scored."""

import json

import numpy as np
import pytest
import torch

from fedseg.errors import UserError
from fedseg.experiment import ConfigError, parse_experiment
from fedseg.models.registry import NETWORKS, NORMS, ModelConfig, build_network
from fedseg.plans.registry import OPTIONS, PLANS, build_plan
from fedseg.simulate import run_simulation
from fedseg.study import load_site, site_app
from fedseg.training.local_norm import NORMS_WITH_STATE, norm_keys
from fedseg.training.trainer import SiteTrainer, build_site_network
from fedseg.types import RoundConfig
from tiny_experiment import tiny_experiment

WIDTHS = {"UNet": (4, 8, 16), "BasicUNet": (4, 4, 8, 8, 16, 4), "SegResNet": (4,)}
STATISTICS = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
SITES = ("hospital_a", "hospital_b", "hospital_c")
ON = {"local_norm": True}
TRAIN = SiteTrainer.train


def fedbn(tmp_path, rounds=2, **sections):
    return tiny_experiment(tmp_path, rounds=rounds, model={"norm": "batch"}, plan={"name": "fedavg", **ON}, **sections)


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("norm", NORMS)
def test_norm_keys_are_every_parameter_and_statistic_of_batch_norm_and_none_of_instance_norm(name, norm):
    network = build_network(ModelConfig(name=name, channels=WIDTHS[name] * (2 if name == "SegResNet" else 1),
                                        norm=norm, num_res_units=1), 2, 1, 2)
    keys = norm_keys(network)
    batch_norms = [n for n, m in network.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bool(keys) == (norm in NORMS_WITH_STATE)  # the rule the experiment check uses, on the real network
    assert sorted(keys) == sorted(f"{n}.{s}" for n in batch_norms for s in STATISTICS)
    if norm == "instance":  # MONAI's instance norm: affine=False, no running statistics
        assert not batch_norms and all(not m.affine and not m.track_running_stats for m in network.modules()
                                       if isinstance(m, torch.nn.InstanceNorm2d))
    else:
        assert len(batch_norms) >= 4 and set(keys) < set(network.state_dict())


def test_local_norm_without_normalisation_state_is_refused_when_the_experiment_is_read(tmp_path):
    config = fedbn(tmp_path)
    with pytest.raises(ConfigError, match=r"norm = 'instance' has neither .* set \[model\] norm = \"batch\""):
        parse_experiment({**config, "model": {**config["model"], "norm": "instance"}})
    with pytest.raises(ConfigError, match="privacy.dp = \"sample\" cannot train: remove local_norm"):
        parse_experiment({**config, "privacy": {"dp": "sample", "epsilon": 8, "delta": 1e-3}})
    with pytest.raises(ConfigError, match="local_norm = 'yes' has the wrong type; expected true or false"):
        parse_experiment({**config, "plan": {"name": "fedavg", "local_norm": "yes"}})
    with pytest.raises(ConfigError, match="unknown option 'local_norm' for plan 'cyclic'"):
        parse_experiment({**config, "plan": {"name": "cyclic", **ON}})
    assert parse_experiment({**config, "plan": {"name": "fedavg", "local_norm": False}}).plan["local_norm"] is False


def test_every_averaging_plan_sends_local_norm_to_its_sites():
    averaging = [name for name in PLANS if name not in ("cyclic", "single_transfer")]
    assert {"fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad"} <= set(averaging)
    for name in averaging:
        assert "local_norm" in OPTIONS[name], name
        configs = build_plan(name, 0, SITES, 1, None, ON, rounds=2).configure_train(1, SITES).values()
        assert configs and all(c.extra["local_norm"] is True for c in configs), name
        plain = build_plan(name, 0, SITES, 1, None, {}, rounds=2).configure_train(1, SITES).values()
        assert all("local_norm" not in c.extra for c in plain), name
    prox = build_plan("fedprox", 0, SITES, 1, None, {**ON, "proximal_mu": 0.1}, rounds=1).configure_train(0, SITES)
    assert all(c.extra["local_norm"] is True and c.extra["proximal_mu"] == 0.1 for c in prox.values())


@pytest.fixture
def site(tmp_path):
    """``site(state_dir)`` -> a batch-norm trainer of hospital_a that records the weights each training starts from."""
    experiment = parse_experiment(fedbn(tmp_path))
    data = load_site(experiment, experiment.sites[0])

    def make(state_dir=None) -> SiteTrainer:
        trainer = site_app(experiment, data, state_dir=state_dir).trainer
        trainer.starts, train = [], trainer._train
        trainer._train = lambda *args, **kw: trainer.starts.append(trainer.weights()) or train(*args, **kw)
        return trainer

    return make


def moved(weights):
    """Another global model: every float value changed."""
    return {k: v + np.asarray(0.25, v.dtype) if v.dtype.kind == "f" else v + 1 for k, v in weights.items()}


def split(weights, keys):
    return ({k: v for k, v in weights.items() if k in keys}, {k: v for k, v in weights.items() if k not in keys})


def assert_same(a, b):
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def config(round, local_norm=True):
    return RoundConfig(round=round, seed=round + 1, local_steps=2, extra={"local_norm": local_norm})


def test_after_a_round_a_site_trains_from_its_own_normalisation_not_the_global_one(site):
    trainer = site()
    keys = trainer.local_norm.keys
    first = trainer.train(trainer.weights(), config(0)).weights
    received = moved(first)
    trainer.train(received, config(1))
    own, shared = split(trainer.starts[1], keys)
    assert_same(own, split(first, keys)[0])  # its own statistics and affine parameters from round 0
    assert_same(shared, split(received, keys)[1])  # every other weight as received
    trainer.train(received, config(2, local_norm=False))
    assert_same(trainer.starts[2], received)  # without local_norm: the global model as it is
    with pytest.raises(UserError, match="site hospital_a: the round's local_norm must be true or false, got 'yes'"):
        trainer.train(received, config(3, local_norm="yes"))


def test_a_restarted_site_uses_its_saved_normalisation(site, tmp_path):
    state = tmp_path / "state"
    trainer = site(state)
    updates = [trainer.train(trainer.weights(), config(0)).weights]
    updates.append(trainer.train(moved(updates[0]), config(1)).weights)
    updates.append(trainer.train(moved(updates[1]), config(2)).weights)
    assert sorted(p.name for p in state.glob("local_norm_*")) == ["local_norm_round_0001.pt", "local_norm_round_0002.pt"]
    keys, received = trainer.local_norm.keys, moved(updates[2])

    assert_same(split(site(state).local_norm.own(received), keys)[0], split(updates[2], keys)[0])
    again = site(state)  # a new process asked for round 2 again (a resume after a crash in round 2)
    retrained = again.train(received, config(2)).weights
    assert_same(split(again.starts[0], keys)[0], split(updates[1], keys)[0])  # the values before round 2
    restarted = site(state)
    restarted.train(received, config(3))
    assert_same(split(restarted.starts[0], keys)[0], split(retrained, keys)[0])  # round 2's, as retrained

    (state / "local_norm_round_0002.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="local_norm_round_0002.pt: this site's saved normalisation is damaged or does not fit"):
        site(state).train(received, config(3))


def run(tmp_path, out, monkeypatch, crash_round=None, **federation):
    """A 2-round FedBN simulation; returns every site's update per round and the saved models."""
    updates, original = {}, TRAIN

    def recorded(self, weights, config):
        if config.round == crash_round and self.name == "hospital_b":
            raise RuntimeError("power cut")
        updates[config.round, self.name] = update = original(self, weights, config)
        return update

    monkeypatch.setattr(SiteTrainer, "train", recorded)
    experiment = parse_experiment(fedbn(tmp_path, federation={"validate_global": False, **federation}))
    run_simulation(experiment, tmp_path / out, resume=(tmp_path / out).exists())
    checkpoints = tmp_path / out / "checkpoints"
    return updates, {p.stem: torch.load(p, weights_only=True) for p in checkpoints.glob("F*.pt")}


def test_fl_global_averages_the_sites_norms_and_fl_local_is_it_with_one_sites_own(tmp_path, monkeypatch):
    updates, models = run(tmp_path, "run", monkeypatch)
    assert sorted(models) == ["FL_global", *(f"FL_local_{s}" for s in SITES)]
    experiment = parse_experiment(fedbn(tmp_path))
    keys = norm_keys(build_site_network(experiment.model, experiment.task, experiment.training.loss))
    last = {s: updates[1, s].weights for s in SITES}  # equal n_samples: the plain mean
    for key in keys:
        mean = np.mean([last[s][key].astype(np.float64) for s in SITES], axis=0)
        np.testing.assert_allclose(models["FL_global"][key].numpy(), mean, rtol=1e-6, atol=1e-7)
    for s in SITES:
        local, global_ = models[f"FL_local_{s}"], models["FL_global"]
        assert all(torch.equal(local[k], global_[k]) for k in global_ if k not in keys)
        assert all(np.array_equal(local[k].numpy(), last[s][k]) for k in keys)
        assert any(not torch.equal(local[k], global_[k]) for k in keys)  # it differs in its norm keys only
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert len(results["plan_notes"]) == 1 and "FL_local_<site> is FL_global with that site's own" in \
        results["plan_notes"][0]
    assert set(results["models"]) == set(models)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "with each site's own normalisation → `FL_local_<site>`" in report and "own normalisation from its last" in report


def test_a_fedbn_run_resumed_after_round_one_is_bit_identical(tmp_path, monkeypatch):
    _, straight = run(tmp_path, "straight", monkeypatch)
    with pytest.raises(RuntimeError, match="power cut"):  # hospital_a has trained round 1 and kept its norms
        run(tmp_path, "resumed", monkeypatch, crash_round=1)
    _, resumed = run(tmp_path, "resumed", monkeypatch)
    assert sorted(resumed) == sorted(straight)
    for name, model in straight.items():
        assert all(torch.equal(value, resumed[name][key]) for key, value in model.items()), name
