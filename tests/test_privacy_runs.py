"""Private runs end to end in simulation: a crash and resume retraces the run bit for bit under
client-level and sample-level DP, the noise secret stays out of the checkpoints, and results.json
and the report say what was spent."""

import json
import shutil
import stat

import pytest
import torch
from tiny_experiment import tiny_experiment

from fedseg.experiment import parse_experiment
from fedseg.simulate import run_simulation
from fedseg.training.trainer import SiteTrainer

PRIVATE = {
    "client": {"privacy": {"dp": "client", "epsilon": 8.0, "clip": 1.0}, "plan": {"name": "fedavg",
                                                                                   "weighted_by": "uniform"}},
    "sample": {"privacy": {"dp": "sample", "epsilon": 8.0, "delta": 1e-2}},
}


def final(run_dir):
    return torch.load(run_dir / "checkpoints" / "FL_global.pt", weights_only=True)


@pytest.mark.parametrize("mode", sorted(PRIVATE))
def test_a_private_run_resumed_after_a_crash_equals_an_uninterrupted_one(tmp_path, monkeypatch, mode):
    experiment = parse_experiment(tiny_experiment(tmp_path, rounds=3, **PRIVATE[mode]))
    run_simulation(experiment, tmp_path / "straight")
    original = SiteTrainer.train

    def crash_in_round_two(self, weights, config):
        if config.round == 1 and self.name == "hospital_b":
            raise RuntimeError("power cut")
        return original(self, weights, config)

    monkeypatch.setattr(SiteTrainer, "train", crash_in_round_two)
    for secrets in ("private", "sites"):  # the same run's secrets: the coordinator's noise seed, each site's
        if (tmp_path / "straight" / secrets).exists():
            shutil.copytree(tmp_path / "straight" / secrets, tmp_path / "crashed" / secrets)
    with pytest.raises(RuntimeError, match="power cut"):
        run_simulation(experiment, tmp_path / "crashed")
    monkeypatch.setattr(SiteTrainer, "train", original)
    results = run_simulation(experiment, tmp_path / "crashed", resume=True)
    straight, resumed = final(tmp_path / "straight"), final(tmp_path / "crashed")
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)

    privacy = results["privacy"]
    assert privacy["dp"]["mode"] == mode and privacy["dp"]["target_epsilon"] == 8.0
    spent = list(privacy["epsilon"].values())
    assert spent and all(7.9 <= value <= 8.0 for value in spent)  # the whole run spends the budget
    assert set(privacy["membership_auc"]) == {"hospital_a", "hospital_b", "hospital_c"}
    assert "## Privacy" in (tmp_path / "crashed" / "report.md").read_text()


def test_client_dp_noise_secret_is_kept_out_of_the_checkpoints(tmp_path):
    experiment = parse_experiment(tiny_experiment(tmp_path, rounds=1, **PRIVATE["client"]))
    run_simulation(experiment, tmp_path / "run")
    secret = tmp_path / "run" / "private" / "client_dp_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    value = secret.read_text().strip()
    for checkpoint in (tmp_path / "run" / "checkpoints").glob("*.pt"):
        assert value.encode() not in checkpoint.read_bytes()
    for name in ("metrics.jsonl", "results.json", "report.md", "experiment.toml"):
        assert value not in (tmp_path / "run" / name).read_text()


def test_sample_dp_reports_no_training_loss_and_epsilon_every_round(tmp_path):
    experiment = parse_experiment(tiny_experiment(tmp_path, rounds=2, **PRIVATE["sample"]))
    run_simulation(experiment, tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("train_loss" not in line and 0 < line["epsilon"] <= 8.0 for line in lines)
    by_site = {}
    for line in lines:
        by_site.setdefault(line["site"], []).append(line["epsilon"])
    assert all(values == sorted(values) and len(values) == 2 for values in by_site.values())
