"""The simulation runtime end to end on tiny synthetic sites: run directory, determinism, resume;
and with other compute plans on fake sites that do not train."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tomli_w
import torch

from fedseg.errors import UserError
from fedseg.experiment import parse_experiment
from fedseg.plans.cyclic import CyclicWeightTransfer
from fedseg.plans.fedavg import FedAvg
from fedseg.plans.fedopt import FedOpt
from fedseg.runtime.run_directory import RunDirectory
from fedseg.runtime.simulation import simulation_engine
from fedseg.runtime.site_app import SiteApp
from fedseg.simulate import run_simulation
from fedseg.study import initial_weights
from fedseg.training.trainer import SiteTrainer, build_site_network
from fedseg.types import CaseMetrics, Update
from tiny_experiment import tiny_experiment


def final_weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "FL_global.pt", weights_only=True)


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_run_directory_has_everything_a_researcher_keeps(tmp_path):
    experiment = parse_experiment(tiny_experiment(tmp_path, rounds=2))
    out = tmp_path / "run"
    results = run_simulation(experiment, out)

    assert (out / "experiment.toml").read_text() == experiment.to_toml()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "FL_global.pt", "global_round_000.pt", "global_round_001.pt"]
    network = build_site_network(experiment.model, experiment.task, experiment.training.loss)
    network.load_state_dict(final_weights(out))  # a plain state dict, usable outside fedseg

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["round"], r["site"]) for r in lines] == [
        (r, s) for r in range(2) for s in ("hospital_a", "hospital_b", "hospital_c")]
    for record in lines:
        assert {"train_loss", "val_dice", "global_val_dice", "n_samples", "seconds"} <= record.keys()
        assert record["n_samples"] == 6 and record["steps"] == 3

    saved = json.loads((out / "results.json").read_text())
    assert saved["model"] == "FL_global" and saved["wall_time_s"] > 0
    assert set(saved["sites"]) == {"hospital_a", "hospital_b", "hospital_c"}
    site = saved["sites"]["hospital_a"]
    assert site["n_cases"] == len(site["cases"]) == 2
    assert set(site["cases"][0]["dice"]) == {"lesion"}
    assert saved["overall"]["n_cases"] == 6
    assert saved["overall"]["mean_dice"] == pytest.approx(
        np.mean([c["mean_dice"] for s in saved["sites"].values() for c in s["cases"]]))
    assert results["overall"] == saved["overall"]

    report = (out / "report.md").read_text()
    assert "| **overall** | 6 |" in report and "figures/learning_curve.png" in report
    assert (out / "figures" / "learning_curve.png").stat().st_size > 1000


def test_same_seed_gives_the_same_model_and_another_seed_does_not(tmp_path):
    config = tiny_experiment(tmp_path, rounds=2)
    run_simulation(parse_experiment(config), tmp_path / "one")
    run_simulation(parse_experiment(config), tmp_path / "two")
    assert_same_weights(final_weights(tmp_path / "one"), final_weights(tmp_path / "two"))
    run_simulation(parse_experiment({**config, "seed": 8}), tmp_path / "three")
    other = final_weights(tmp_path / "three")
    assert any(not torch.equal(v, other[k]) for k, v in final_weights(tmp_path / "one").items())


def test_resume_after_a_crash_mid_round_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    experiment = parse_experiment(tiny_experiment(tmp_path, rounds=4))
    run_simulation(experiment, tmp_path / "straight")

    original = SiteTrainer.train

    def crash_in_round_two(self, weights, config):
        if config.round == 2 and self.name == "hospital_b":
            raise RuntimeError("power cut")
        return original(self, weights, config)

    monkeypatch.setattr(SiteTrainer, "train", crash_in_round_two)
    with pytest.raises(RuntimeError, match="power cut"):
        run_simulation(experiment, tmp_path / "crashed")
    assert not (tmp_path / "crashed" / "results.json").exists()
    monkeypatch.setattr(SiteTrainer, "train", original)

    run_simulation(experiment, tmp_path / "crashed", resume=True)
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "crashed"))
    rounds = [json.loads(line)["round"] for line in (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [r for r in range(4) for _ in range(3)]  # no line of the lost round twice


@pytest.mark.slow
def test_resume_after_kill_9_equals_an_uninterrupted_run(tmp_path):
    config = tiny_experiment(tmp_path, rounds=8, training={"local_steps": 6})
    path = tmp_path / "experiment.toml"
    path.write_text(tomli_w.dumps(config))
    command = [sys.executable, "-m", "fedseg.cli", "simulate", str(path), "--out"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    subprocess.run(command + [str(tmp_path / "straight")], check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(command + [str(killed)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoints" / "global_round_002.pt").exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "results.json").exists(), "killed too late: the run had finished"

    resumed = subprocess.run(command + [str(killed), "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(killed))


def test_a_used_run_directory_needs_resume_and_the_same_experiment(tmp_path):
    config = tiny_experiment(tmp_path, rounds=1)
    run_simulation(parse_experiment(config), tmp_path / "run")
    with pytest.raises(UserError, match="--resume"):
        run_simulation(parse_experiment(config), tmp_path / "run")
    changed = parse_experiment({**config, "training": {**config["training"], "lr": 0.5}})
    with pytest.raises(UserError, match="differs from the experiment given"):
        run_simulation(changed, tmp_path / "run", resume=True)


def test_federated_training_learns(tmp_path):
    experiment = parse_experiment(tiny_experiment(tmp_path, rounds=6, n_cases=16,
                                                  training={"local_steps": 8}))
    results = run_simulation(experiment, tmp_path / "run")
    trainers = {}
    from fedseg.study import load_sites  # the same sites, to score the untrained model

    for name, data in load_sites(experiment).items():
        trainers[name] = SiteTrainer(data, experiment.model, experiment.training)
    untrained = np.mean([c.mean_dice for t in trainers.values()
                         for c in t.evaluate(initial_weights(experiment))])
    assert results["overall"]["mean_dice"] > max(0.5, untrained + 0.3)


# --- the runtime with other plans, on fake sites (no training) -----------------------------------
class FakeSite:
    """Moves the weights by seeded noise; validation Dice fixed per site; a 'val' case scores it."""

    def __init__(self, dice: float):
        self.dice = dice
        self.evaluated = 0

    def train(self, weights, config):
        rng = np.random.default_rng(config.seed)
        moved = {k: (v + rng.normal(scale=0.1, size=v.shape)).astype(v.dtype) for k, v in weights.items()}
        return Update(moved, n_samples=4, metrics={"val_dice": self.dice})

    def evaluate(self, weights, split="test"):
        self.evaluated += 1
        return [CaseMetrics("case", {"lesion": self.dice})]

    def case_counts(self):
        return {"train": 4, "val": 1, "test": 1}

    def weights(self):
        return dict(START)


def fake_sites():
    return {"a": FakeSite(0.8), "b": FakeSite(0.0), "c": FakeSite(0.4), "d": FakeSite(0.2)}


def SimulationRuntime(plan, sites, run_dir):
    """The round engine over in-process site apps wrapping the fake sites."""
    return simulation_engine(plan, {name: SiteApp(name, site) for name, site in sites.items()}, run_dir)


START = {"w": np.arange(6, dtype=np.float32)}


def test_records_carry_aggregation_weights_and_the_plan_summary(tmp_path):
    sites = fake_sites()
    plan = FedAvg(seed=0, weighted_by="val_dice", fraction=0.5)
    SimulationRuntime(plan, sites, RunDirectory(tmp_path)).run(START, rounds=3)
    lines = RunDirectory(tmp_path).read_metrics()
    assert len(lines) == 6  # 2 of 4 sites a round
    for round in range(3):
        records = [r for r in lines if r["round"] == round]
        chosen = list(plan.configure_train(round, sorted(sites)))
        assert [r["site"] for r in records] == sorted(chosen)
        floored = {s: max(sites[s].dice, 0.05) for s in chosen}
        expected = {s: w / sum(floored.values()) for s, w in floored.items()}
        assert {r["site"]: r["aggregation_weight"] for r in records} == pytest.approx(expected)
        assert records[0]["plan"] == {"aggregation_weights": pytest.approx(expected)}
        assert "plan" not in records[1]
    assert sum(s.evaluated for s in sites.values()) == 6  # only sites that trained validate the global model


def test_cyclic_plan_trains_one_site_a_round(tmp_path):
    sites = fake_sites()
    plan = CyclicWeightTransfer(seed=0, sites=list(sites), cycles=2)
    final = SimulationRuntime(plan, sites, RunDirectory(tmp_path)).run(START, rounds=plan.total_rounds)
    lines = RunDirectory(tmp_path).read_metrics()
    assert [(r["round"], r["site"]) for r in lines] == [(r, "abcd"[r % 4]) for r in range(8)]
    assert [r["plan"] for r in lines[3:5]] == [{"visited": "d", "cycle": 0, "aggregation_weights": {"d": 1.0}},
                                               {"visited": "a", "cycle": 1, "aggregation_weights": {"a": 1.0}}]
    assert all(r["aggregation_weight"] == 1.0 for r in lines)
    assert not np.array_equal(final["w"], START["w"])


def test_fedadam_resumed_through_the_run_directory_equals_a_straight_run(tmp_path):
    def runtime(out):
        run_dir = RunDirectory(out)
        run_dir.create()
        return SimulationRuntime(FedOpt(seed=2, server_lr=0.05, fraction=0.75), fake_sites(), run_dir)

    straight = runtime(tmp_path / "straight").run(START, rounds=4)
    runtime(tmp_path / "resumed").run(START, rounds=2)
    resumed = runtime(tmp_path / "resumed").run(START, rounds=4, resume=True)
    assert straight["w"].tobytes() == resumed["w"].tobytes()
    def lines(out):
        return [{k: v for k, v in r.items() if k != "round_seconds"} for r in RunDirectory(out).read_metrics()]

    assert lines(tmp_path / "straight") == lines(tmp_path / "resumed")
    assert [r["round"] for r in lines(tmp_path / "resumed")] == [r for r in range(4) for _ in range(3)]
