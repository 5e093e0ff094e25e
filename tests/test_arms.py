"""Comparison arms in one run: federated (+ FL_local), standalone per site, centralized."""

import json

import pytest
import torch

from fedseg.evaluation.cross_site import read_cross_site_csv
from fedseg.experiment import parse_experiment
from fedseg.simulate import run_simulation
from tiny_experiment import tiny_experiment

SITES = ("hospital_a", "hospital_b", "hospital_c")
MODELS = ["FL_global", *[f"FL_local_{s}" for s in SITES], *[f"standalone_{s}" for s in SITES], "centralized"]


@pytest.fixture(scope="module")
def all_arms(tmp_path_factory):
    root = tmp_path_factory.mktemp("arms")
    config = tiny_experiment(root, rounds=2, arms=["federated", "standalone", "centralized"],
                             federation={"rounds": 2, "fine_tune_epochs": 1})
    experiment = parse_experiment(config)
    return experiment, root / "run", run_simulation(experiment, root / "run")


def test_every_arm_produces_its_models(all_arms):
    _, out, results = all_arms
    assert results["models"] == MODELS
    assert sorted(p.stem for p in (out / "checkpoints").glob("*.pt") if not p.stem.startswith("global")) == sorted(MODELS)
    for arm in [f"standalone_{s}" for s in SITES] + ["centralized"]:
        lines = [json.loads(x) for x in (out / "arms" / arm / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in lines] == [0, 1]
    centralized = [json.loads(x) for x in (out / "arms" / "centralized" / "metrics.jsonl").read_text().splitlines()]
    assert centralized[0]["n_samples"] == 18  # 3 sites x 6 training cases pooled


def test_fl_local_starts_from_fl_global_and_differs_from_it(all_arms):
    _, out, _ = all_arms
    global_weights = torch.load(out / "checkpoints" / "FL_global.pt", weights_only=True)
    local = torch.load(out / "checkpoints" / "FL_local_hospital_a.pt", weights_only=True)
    other = torch.load(out / "checkpoints" / "FL_local_hospital_b.pt", weights_only=True)
    assert any(not torch.equal(global_weights[k], local[k]) for k in local)
    assert any(not torch.equal(other[k], local[k]) for k in local)


def test_every_model_is_scored_on_every_sites_test_cases(all_arms):
    _, out, results = all_arms
    records = read_cross_site_csv(out / "cross_site.csv")
    pairs = {(r["model"], r["site"], r["case"]) for r in records if r["metric"] == "dice"}
    assert len(pairs) == len(MODELS) * len(SITES) * 2  # 2 test cases per site
    assert {r["metric"] for r in records} == {"dice", "hd95", "bbox_coverage", "failed"}
    matrix = results["matrix"]
    assert list(matrix["rows"]) == MODELS and matrix["columns"] == [*SITES, "overall"]
    assert all(matrix["rows"][m]["overall"]["n"] == 6 for m in MODELS)
    compared = {(r["model"], r["site"]) for r in results["comparisons"]}
    assert compared == {(m, s) for m in MODELS[1:] for s in (*SITES, "overall")}
    assert all(r["reference"] == "FL_global" for r in results["comparisons"])
    assert [f["model"] for f in results["failures"]] == MODELS


def test_resuming_a_finished_multi_arm_run_retrains_nothing(all_arms):
    experiment, out, results = all_arms
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").glob("*.pt")}
    again = run_simulation(experiment, out, resume=True)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").glob("*.pt")} == stamps
    assert again["matrix"] == results["matrix"]


def test_unknown_arm_is_a_config_error(tmp_path):
    from fedseg.experiment import ConfigError

    with pytest.raises(ConfigError, match="arms must be a non-empty list"):
        parse_experiment(tiny_experiment(tmp_path, arms=["federated", "pooled"]))


@pytest.mark.parametrize("plan, rounds, trained", [
    ({"name": "fedprox", "proximal_mu": 0.01}, 2, 6),
    ({"name": "fedyogi", "server_lr": 0.01}, 2, 6),
    ({"name": "fedavg", "weighted_by": "val_dice", "fraction": 0.5, "min_sites": 2}, 2, 4),
    ({"name": "cyclic", "order": "shuffled"}, 2, 6),  # rounds = cycles: 2 visits per site
    ({"name": "single_transfer"}, 1, 3),
])
def test_every_plan_runs_from_the_experiment_file(tmp_path, plan, rounds, trained):
    experiment = parse_experiment(tiny_experiment(tmp_path, rounds=rounds, plan=plan))
    results = run_simulation(experiment, tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == trained  # one line per site trained in each runtime round
    assert all(line["aggregation_weight"] > 0 for line in lines)
    assert results["overall"]["n_cases"] == 6
    assert (tmp_path / "run" / "checkpoints" / f"global_round_{experiment.runtime_rounds - 1:03d}.pt").exists()


def test_a_crash_in_a_later_arm_resumes_there_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    from fedseg.training.trainer import SiteTrainer

    config = tiny_experiment(tmp_path, rounds=2, arms=["federated", "standalone", "centralized"])
    experiment = parse_experiment(config)
    straight = run_simulation(experiment, tmp_path / "straight")

    original = SiteTrainer.train

    def crash_in_the_centralized_arm(self, weights, round_config):
        if self.name == "centralized" and round_config.round == 1:
            raise RuntimeError("power cut")
        return original(self, weights, round_config)

    monkeypatch.setattr(SiteTrainer, "train", crash_in_the_centralized_arm)
    with pytest.raises(RuntimeError, match="power cut"):
        run_simulation(experiment, tmp_path / "crashed")
    monkeypatch.setattr(SiteTrainer, "train", original)
    done_before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "crashed" / "checkpoints").glob("*.pt")}
    assert "standalone_hospital_c.pt" in done_before and "centralized.pt" not in done_before

    resumed = run_simulation(experiment, tmp_path / "crashed", resume=True)
    assert resumed["matrix"] == straight["matrix"]
    for name in ("FL_global", "standalone_hospital_a", "centralized"):
        a = torch.load(tmp_path / "straight" / "checkpoints" / f"{name}.pt", weights_only=True)
        b = torch.load(tmp_path / "crashed" / "checkpoints" / f"{name}.pt", weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "crashed" / "checkpoints").glob("*.pt")}
    assert all(after[n] == t for n, t in done_before.items())  # finished arms were not retrained


def test_k_fold_federations_are_evaluated_as_one_ensemble(tmp_path):
    config = tiny_experiment(tmp_path, rounds=1, federation={"rounds": 1, "folds": 2, "fine_tune_epochs": 1})
    experiment = parse_experiment(config)
    results = run_simulation(experiment, tmp_path / "run")
    names = sorted(p.stem for p in (tmp_path / "run" / "checkpoints").glob("*.pt"))
    assert names == sorted(["FL_global_fold0", "FL_global_fold1",
                            *[f"FL_local_{s}_fold{f}" for s in SITES for f in (0, 1)]])
    assert results["models"] == ["FL_global", *[f"FL_local_{s}" for s in SITES]]
    assert results["overall"]["n_cases"] == 6
    for fold in (0, 1):  # each fold validates on its own held-out half of train+val
        lines = [json.loads(x) for x in (tmp_path / "run" / "arms" / f"FL_global_fold{fold}" / "metrics.jsonl")
                 .read_text().splitlines()]
        assert [r["n_samples"] for r in lines] == [4, 4, 4]  # 8 train+val cases per site, half held out


def test_ensemble_of_identical_members_predicts_like_one_model_and_folds_partition(tmp_path):
    from fedseg.study import load_sites
    from fedseg.training.trainer import SiteTrainer
    from fedseg.training.weights import get_weights

    experiment = parse_experiment(tiny_experiment(tmp_path))
    data = load_sites(experiment)["hospital_a"]
    trainer = SiteTrainer(data, experiment.model, experiment.training)
    weights = get_weights(trainer.network)
    assert [c.dice for c in trainer.evaluate([weights, weights])] == [c.dice for c in trainer.evaluate(weights)]

    folds = [data.fold(i, 2, seed=0) for i in range(2)]
    held_out = [{c["case"] for c in f.cases["val"]} for f in folds]
    everything = {c["case"] for split in ("train", "val") for c in data.cases[split]}
    assert held_out[0].isdisjoint(held_out[1]) and held_out[0] | held_out[1] == everything
    assert all({c["case"] for c in f.cases["train"]} == everything - v for f, v in zip(folds, held_out))
    assert folds[0].cases["test"] == data.cases["test"]
