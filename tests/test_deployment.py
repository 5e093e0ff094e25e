"""Deployment on NVIDIA FLARE: real coordinator, site and admin processes on 127.0.0.1, mutual TLS.

One consortium of three sites serves the tests in order; the drop-out and restart tests come
last because they kill participants.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from consortium_harness import Consortium
from fedseg.consortium import follow, submit
from fedseg.deployed_arms import CURVE_METRICS
from fedseg.errors import UserError
from fedseg.experiment import load_experiment
from fedseg.runtime.flare import admin
from fedseg.runtime.flare.provision import load_project, provision, read_kit
from fedseg.runtime.run_directory import RunDirectory
from fedseg.simulate import run_simulation
from tiny_experiment import tiny_experiment

WEIGHT_TOLERANCE = 1e-6
"""Deployment folds updates in arrival order, simulation in site order: float sums may differ in
the last bit (in practice they have been identical)."""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("deployment")


@pytest.fixture(scope="module")
def experiment_file(workspace):
    """Write an experiment over the shared synthetic sites; returns a function of overrides."""
    def write(name: str, **sections) -> Path:
        data = tiny_experiment(workspace, **sections)
        data["name"] = name
        path = workspace / f"{name}.toml"
        path.write_text(tomli_w.dumps(data))
        return path
    return write


@pytest.fixture(scope="module")
def consortium(workspace):
    sites = {site["name"]: Path(site["path"]) for site in tiny_experiment(workspace)["sites"]}
    network = Consortium(workspace, sites, homomorphic=True)  # kits with CKKS keys: used by the HE run only
    network.start_all()
    yield network
    network.stop()


def run_deployed(consortium: Consortium, experiment: Path, out: Path, resume: bool = False) -> dict:
    session, job_id = submit(load_experiment(experiment), consortium.kits["admin"], resume)
    return follow(consortium.kits["admin"], session, job_id, out, on_progress=lambda job: None)


def assert_same_run(deployed: Path, simulated: Path, results: bool = True) -> None:
    rounds_d, weights_d, _ = RunDirectory(deployed).last_round()
    rounds_s, weights_s, _ = RunDirectory(simulated).last_round()
    assert rounds_d == rounds_s
    assert weights_d.keys() == weights_s.keys()
    for name in weights_s:
        np.testing.assert_allclose(weights_d[name], weights_s[name], atol=WEIGHT_TOLERANCE, err_msg=name)
    metrics_d, metrics_s = RunDirectory(deployed).read_metrics(), RunDirectory(simulated).read_metrics()
    assert [(m["round"], m["site"]) for m in metrics_d] == [(m["round"], m["site"]) for m in metrics_s]
    for d, s in zip(metrics_d, metrics_s):
        for key in ("train_loss", "val_dice", "global_val_dice", "aggregation_weight"):
            if key in s:
                assert d[key] == pytest.approx(s[key], abs=1e-6), (key, d["round"], d["site"])
    if not results:  # one fold's federation: the results are the run's
        return
    results_d = json.loads((deployed / "results.json").read_text())
    results_s = json.loads((simulated / "results.json").read_text())
    assert results_d["overall"]["mean_dice"] == pytest.approx(results_s["overall"]["mean_dice"], abs=1e-6)
    assert results_d["overall"]["n_cases"] == results_s["overall"]["n_cases"] > 0


def assert_same_matrix(deployed: Path, simulated: Path, models: list[str]) -> None:
    """Every model scored on every site's test cases, with the simulation's cells and paired tests."""
    results_d, results_s = (json.loads((run / "results.json").read_text()) for run in (deployed, simulated))
    assert results_d["models"] == results_s["models"] == models
    assert results_d["unscored_sites"] == {}
    for model, row in results_s["matrix"]["rows"].items():
        for column, cell in row.items():
            assert results_d["matrix"]["rows"][model][column]["n"] == cell["n"] > 0
            assert results_d["matrix"]["rows"][model][column]["mean"] == pytest.approx(cell["mean"], abs=1e-6)
    assert len(results_d["comparisons"]) == len(results_s["comparisons"]) > 0
    for d, s in zip(results_d["comparisons"], results_s["comparisons"]):
        assert d == {k: pytest.approx(v, abs=1e-6) if isinstance(v, float) else v for k, v in s.items()}


# -- no processes ---------------------------------------------------------------------------------


def test_provision_writes_one_signed_kit_per_participant(workspace):
    project = workspace / "kits-project.toml"
    project.write_text(tomli_w.dumps({
        "name": "lab", "coordinator": {"host": "fl.example.org", "fl_port": 9002, "admin_port": 9003},
        "sites": [{"name": "site-a", "org": "hospital_a"}, {"name": "site-b"}],
        "admins": [{"name": "me@lab.org"}]}))
    kits = provision(load_project(project), workspace / "kits-only")
    assert set(kits) == {"coordinator", "site-a", "site-b", "admin"}
    for name, kit in kits.items():
        assert (kit / "startup" / "rootCA.pem").is_file()
        assert (kit / "startup" / ("server.crt" if name == "coordinator" else "client.crt")).is_file()
    assert read_kit(kits["site-a"], "site").org == "hospital_a"
    with pytest.raises(UserError, match="not a server kit"):
        read_kit(kits["site-a"], "server")
    with pytest.raises(UserError, match="not empty"):
        provision(load_project(project), workspace / "kits-only")


@pytest.mark.parametrize("change, message", [
    ({"admins": [{"name": "no-email"}]}, "e-mail"),
    ({"sites": []}, "no \\[\\[sites\\]\\]"),
    ({"coordinator": {"host": "h", "fl_port": 1, "admin_port": 1}}, "must differ"),
    ({"network": {"heartbeat_timeout": 5}}, "unknown key"),
    ({"sites": [{"name": "a", "org": "hospital-a"}]}, "org 'hospital-a' is not allowed"),
])
def test_bad_project_files_are_explained(workspace, change, message):
    project = {"name": "lab", "coordinator": {"host": "h"}, "sites": [{"name": "a"}], "admins": [{"name": "me@x.org"}]}
    path = workspace / "bad-project.toml"
    path.write_text(tomli_w.dumps({**project, **change}))
    with pytest.raises(UserError, match=message):
        load_project(path)


def test_arms_that_need_pooled_data_are_refused_before_submission(experiment_file, workspace):
    from fedseg.deployment import deployable

    with pytest.raises(UserError, match="federated"):
        deployable(load_experiment(experiment_file("arms", arms=["federated", "centralized"])))


def test_a_deployed_run_logs_to_an_mlflow_server_not_to_files_on_the_coordinator(experiment_file, workspace):
    from fedseg.deployment import deployable

    with pytest.raises(UserError, match="http"):
        deployable(load_experiment(experiment_file("mlflow_file", tracking={"mlflow_uri": "file:///tmp/mlruns"})))
    served = load_experiment(experiment_file("mlflow_http", tracking={"mlflow_uri": "https://mlflow.example:5000"}))
    assert deployable(served) is served


# -- a running consortium -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fedavg_run(consortium, experiment_file, workspace) -> Path:
    experiment = experiment_file("fedavg", rounds=3)
    ended = run_deployed(consortium, experiment, workspace / "fedavg-deployed")
    assert ended["state"] == "finished", ended
    run_simulation(load_experiment(experiment), workspace / "fedavg-simulated")
    return workspace / "fedavg-deployed"


@pytest.mark.slow
def test_deployed_fedavg_equals_simulation(fedavg_run, workspace):
    assert_same_run(fedavg_run, workspace / "fedavg-simulated")
    assert (fedavg_run / "report.html").is_file() and (fedavg_run / "cross_site.csv").is_file()


@pytest.mark.slow
def test_coordinator_receives_only_weights_and_scores(fedavg_run, workspace):
    received = [json.loads(line) for line in (fedavg_run / "received.jsonl").read_text().splitlines()]
    assert {r["task"] for r in received} == {"join", "train", "validate", "evaluate", "membership"}
    assert [r["metrics"]["train_cases"] for r in received if r["task"] == "membership"] == [6.0] * 3  # one AUC each
    assert len([r for r in received if r["task"] == "train"]) == 3 * 3
    assert all(r["verdict"] == "accepted" for r in received)
    assert len([r for r in received if r["task"] == "join"]) == 3  # each site declares its cases once
    model = RunDirectory(fedavg_run).last_round()[1]
    shapes = {name: [str(w.dtype), list(w.shape)] for name, w in model.items()}
    case_files = {p.stem.split(".")[0] for p in workspace.joinpath("data").rglob("*.*")}
    for record in received:
        assert record["params"] in ({}, shapes), "only the model's own parameters may be sent"
        assert all(isinstance(v, (int, float)) for v in record["metrics"].values())
        assert set(record["meta"]) <= {"n_samples", "cases", "client_name", "initial_metrics", "declared"}
        assert all(isinstance(v, (int, float)) for v in record["meta"].get("initial_metrics", {}).values())
        for case in record["meta"].get("cases", []):
            assert re.fullmatch(rf"{record['site']}-case-\d{{3}}", case["case"])
        text = json.dumps({k: v for k, v in record.items() if k != "params"})
        assert str(workspace / "data") not in text
        assert not any(re.search(rf"\b{re.escape(name)}\b", text) for name in case_files if len(name) > 3)


@pytest.mark.slow
def test_status_lists_sites_and_jobs(fedavg_run, consortium):
    import io

    from rich.console import Console

    from fedseg import cli

    buffer = io.StringIO()
    original, cli.console = cli.console, Console(file=buffer, width=200)
    try:
        assert cli.main(["status", "--admin", str(consortium.kits["admin"])]) == 0
    finally:
        cli.console = original
    text = buffer.getvalue()
    assert "sites online: hospital_a, hospital_b, hospital_c" in text
    assert "fedavg" in text and "FINISHED:COMPLETED" in text


@pytest.mark.slow
def test_a_deployed_run_writes_the_tensorboard_files_of_its_simulation(fedavg_run, workspace):
    def scalars(run):
        events = EventAccumulator(str(run / "tensorboard" / "FL_global"))
        events.Reload()
        return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}

    deployed, simulated = scalars(fedavg_run), scalars(workspace / "fedavg-simulated")
    assert deployed.keys() == simulated.keys() and "site/hospital_a/train_loss" in deployed
    for tag in (t for t in simulated if "seconds" not in t):
        assert [s for s, _ in deployed[tag]] == [s for s, _ in simulated[tag]] == [1, 2, 3], tag
        assert [v for _, v in deployed[tag]] == pytest.approx([v for _, v in simulated[tag]], abs=1e-5), tag


@pytest.mark.slow
def test_submitting_a_finished_run_again_is_refused_without_touching_it(fedavg_run, consortium, experiment_file,
                                                                        workspace):
    owner = consortium.deployment_state("fedavg")
    ended = run_deployed(consortium, experiment_file("fedavg", rounds=3), workspace / "fedavg-again")
    assert ended["state"] == "failed" and "--resume" in ended["error"]
    assert consortium.deployment_state("fedavg") == owner


@pytest.mark.slow
def test_cyclic_transfer_in_deployment_equals_simulation(consortium, experiment_file, workspace):
    experiment = experiment_file("cyclic", rounds=1, plan={"name": "cyclic"}, federation={"validate_global": False})
    ended = run_deployed(consortium, experiment, workspace / "cyclic-deployed")
    assert ended["state"] == "finished", ended
    run_simulation(load_experiment(experiment), workspace / "cyclic-simulated")
    assert_same_run(workspace / "cyclic-deployed", workspace / "cyclic-simulated")
    visited = [m["site"] for m in RunDirectory(workspace / "cyclic-deployed").read_metrics()]
    assert visited == sorted(consortium.sites)


@pytest.mark.slow
def test_plans_against_site_drift_in_deployment_equal_simulation(consortium, experiment_file, workspace):
    """SCAFFOLD with FedBN-style local batch norm and a cosine lr over FLARE: the control variates
    travel beside the model (``scaffold_control/`` keys, out and back), each site keeps its control
    and its normalisation layers in its kit's state folder, the lr falls over the run, and the
    deployed run equals its simulation."""
    experiment = experiment_file("drift", rounds=2, plan={"name": "scaffold", "local_norm": True},
                                 model={"norm": "batch"}, training={"lr_schedule": "cosine"})
    ended = run_deployed(consortium, experiment, workspace / "drift-deployed")
    assert ended["state"] == "finished", ended
    run_simulation(load_experiment(experiment), workspace / "drift-simulated")
    assert_same_run(workspace / "drift-deployed", workspace / "drift-simulated")
    # FedBN's FL_local: FL_global with each site's own normalisation, made at the site and scored everywhere
    assert_same_matrix(workspace / "drift-deployed", workspace / "drift-simulated",
                       ["FL_global", *(f"FL_local_{site}" for site in consortium.sites)])
    received = [json.loads(line) for line in (workspace / "drift-deployed" / "received.jsonl").read_text().splitlines()]
    trained = [line for line in received if line["task"] == "train"]
    assert len(trained) == 2 * len(consortium.sites)
    assert all(any(key.startswith("scaffold_control/") for key in line["params"]) for line in trained)
    for site in consortium.sites:
        kept = {path.name for path in (consortium.kits[site] / "fedseg-state" / "drift" / site).iterdir()}
        assert {"scaffold_round_0001.pt", "local_norm_round_0001.pt"} <= kept, (site, kept)
    lrs = {(m["round"], m["site"]): m["lr_last"] for m in RunDirectory(workspace / "drift-deployed").read_metrics()}
    assert all(lrs[(1, site)] < lrs[(0, site)] for site in consortium.sites)


@pytest.mark.slow
def test_a_site_that_scales_its_update_is_rejected_and_the_run_equals_its_simulation(consortium, experiment_file,
                                                                                     workspace):
    """Fault injection in deployment: hospital_c multiplies its change to the global model by 100
    (a site-side setting, ``fedseg site --fault``); the coordinator's norm guard rejects it every
    round and the run goes on with the two others, exactly as the simulation of the same fault."""
    consortium.restart_site("hospital_c", fault="scale:100")
    try:
        experiment = experiment_file("faulty", rounds=2, deployment={"min_responses": 2})
        ended = run_deployed(consortium, experiment, workspace / "faulty-deployed")
        assert ended["state"] == "finished", ended
    finally:
        consortium.restart_site("hospital_c")
    metrics = RunDirectory(workspace / "faulty-deployed").read_metrics()
    rejected = [(m["round"], m["site"]) for m in metrics if "rejected" in m]
    assert rejected == [(0, "hospital_c"), (1, "hospital_c")]
    assert all("median" in m["rejected"] for m in metrics if "rejected" in m)
    received = (workspace / "faulty-deployed" / "received.jsonl").read_text()
    guard = [json.loads(line) for line in received.splitlines() if '"task": "guard"' in line]
    assert [(g["round"], g["site"]) for g in guard] == rejected
    assert all(g["verdict"].startswith("rejected: update norm") for g in guard)
    simulated = load_experiment(experiment)
    run_simulation(replace(simulated, faults={"hospital_c": "scale:100"}), workspace / "faulty-simulated")
    assert_same_run(workspace / "faulty-deployed", workspace / "faulty-simulated")


@pytest.mark.slow
def test_secure_aggregation_recovers_a_site_lost_after_masking_and_equals_its_simulation(consortium, experiment_file,
                                                                                           workspace):
    """hospital_c masks its update, then drops out (``--fault drop``): the two others' masks are
    removed with the shares of its secrets, every round, exactly as in the simulation."""
    privacy = {"privacy": {"secure_aggregation": True}, "guard": {"norm_action": "off"},
               "deployment": {"min_responses": 2}}
    consortium.restart_site("hospital_c", fault="drop")
    try:
        experiment = experiment_file("masked", rounds=2, **privacy)
        ended = run_deployed(consortium, experiment, workspace / "masked-deployed")
        assert ended["state"] == "finished", ended
    finally:
        consortium.restart_site("hospital_c")
    metrics = RunDirectory(workspace / "masked-deployed").read_metrics()
    firsts = [m for m in metrics if "plan" in m]  # the site's failed task never reaches the coordinator: missing
    assert [(m["plan"]["secure_sum"], m["missing_sites"]) for m in firsts] == [("masks", ["hospital_c"])] * 2
    received = [json.loads(line) for line in (workspace / "masked-deployed" / "received.jsonl").read_text().splitlines()]
    phases = [(line["task"], line["site"]) for line in received if line["round"] == 0]
    assert ("sa_share", "hospital_c") in phases and ("train", "hospital_c") not in phases
    assert ("sa_unmask", "hospital_a") in phases  # its shares of hospital_c's mask key removed the masks
    assert all(set(line["params"]) == {"masked"} for line in received if line["task"] == "train")
    simulated = load_experiment(experiment)
    run_simulation(replace(simulated, faults={"hospital_c": "drop"}), workspace / "masked-simulated")
    _, deployed_weights, _ = RunDirectory(workspace / "masked-deployed").last_round()
    _, simulated_weights, _ = RunDirectory(workspace / "masked-simulated").last_round()
    for name in simulated_weights:
        np.testing.assert_allclose(deployed_weights[name], simulated_weights[name], atol=WEIGHT_TOLERANCE, err_msg=name)


@pytest.mark.slow
def test_homomorphic_encryption_with_keys_from_provisioning_equals_its_simulation(consortium, experiment_file,
                                                                                  workspace):
    # one round: CKKS decryption is exact to ~1e-10 only, and Adam turns such differences in the
    # next round's starting point into steps of the learning rate where a gradient is near zero
    experiment = experiment_file("encrypted", rounds=1, privacy={"homomorphic": True}, guard={"norm_action": "off"})
    assert not (consortium.kits["coordinator"] / "he_secret.tenseal").exists()
    ended = run_deployed(consortium, experiment, workspace / "encrypted-deployed")
    assert ended["state"] == "finished", ended
    received = (workspace / "encrypted-deployed" / "received.jsonl").read_text()
    assert '"ckks/00000"' in received and "he_decrypt" in received
    run_simulation(load_experiment(experiment), workspace / "encrypted-simulated")
    assert_same_run(workspace / "encrypted-deployed", workspace / "encrypted-simulated")


@pytest.mark.slow
def test_sample_level_dp_in_deployment_spends_each_sites_budget(consortium, experiment_file, workspace):
    experiment = experiment_file("private", rounds=2, privacy={"dp": "sample", "epsilon": 8.0, "delta": 1e-2})
    ended = run_deployed(consortium, experiment, workspace / "private-deployed")
    assert ended["state"] == "finished", ended
    metrics = RunDirectory(workspace / "private-deployed").read_metrics()
    assert all("train_loss" not in m and 0 < m["epsilon"] <= 8.0 for m in metrics)
    assert [m["epsilon"] for m in metrics if m["round"] == 1 and m["site"] == "hospital_a"][0] >= 7.9
    results = json.loads((workspace / "private-deployed" / "results.json").read_text())
    assert set(results["privacy"]["epsilon"]) == set(consortium.sites)
    assert set(results["privacy"]["membership_auc"]) == set(consortium.sites)
    assert "## Privacy" in (workspace / "private-deployed" / "report.md").read_text()


@pytest.mark.slow
def test_a_delta_too_large_for_a_sites_cases_stops_the_job_with_what_to_set(consortium, experiment_file, workspace):
    experiment = experiment_file("private-delta", rounds=1, privacy={"dp": "sample", "epsilon": 8.0, "delta": 0.5})
    ended = run_deployed(consortium, experiment, workspace / "private-delta-deployed")
    assert ended["state"] == "failed" and "set [privacy] delta below 0.167" in ended["error"], ended


@pytest.mark.slow
def test_client_level_dp_over_a_secure_sum_in_deployment(consortium, experiment_file, workspace):
    """Sites clip their own change (the coordinator cannot see it), the coordinator noises the sum and
    keeps the noise's secret in its kit, out of the run directory admins download."""
    experiment = experiment_file("private-sum", rounds=2, guard={"norm_action": "off"},
                                 plan={"name": "fedavg", "weighted_by": "uniform"},
                                 privacy={"dp": "client", "epsilon": 8.0, "clip": 1.0, "delta": 0.1,
                                          "secure_aggregation": True})
    ended = run_deployed(consortium, experiment, workspace / "private-sum-deployed")
    assert ended["state"] == "finished", ended
    firsts = [m for m in RunDirectory(workspace / "private-sum-deployed").read_metrics() if "plan" in m]
    assert [m["plan"]["secure_sum"] for m in firsts] == ["masks", "masks"]
    assert 7.9 <= firsts[-1]["plan"]["client_dp"]["epsilon"] <= 8.0
    kept = consortium.kits["coordinator"] / "fedseg-state" / "private-sum" / "client_dp_secret"
    assert kept.is_file()
    downloaded = [p for p in (workspace / "private-sum-deployed").rglob("*") if p.is_file()]
    assert not any(p.name == "client_dp_secret" for p in downloaded)
    assert not any(kept.read_bytes().strip() in p.read_bytes() for p in downloaded)


@pytest.mark.slow
def test_folds_standalone_and_fl_local_trained_at_the_sites_give_the_simulated_matrix(consortium, experiment_file,
                                                                                       workspace):
    """Sarma et al.'s protocol deployed: two folds (two federations in one job, each site re-splitting
    its cases per fold; FL_global is their ensemble); each site trains its standalone model and
    fine-tunes each fold's FL_global into its FL_local at the site, in its kit's state folder, with the
    simulation's code (the same models, bit for bit); each model goes through the coordinator's memory
    to every site's test cases, and the deployed matrix is the simulated one."""
    experiment = experiment_file("arms", rounds=2, arms=["federated", "standalone"],
                                 federation={"fine_tune_epochs": 1, "folds": 2})
    ended = run_deployed(consortium, experiment, workspace / "arms-deployed")
    assert ended["state"] == "finished", ended
    run_simulation(load_experiment(experiment), workspace / "arms-simulated")
    deployed, simulated = workspace / "arms-deployed", workspace / "arms-simulated"
    for fold in range(2):  # each fold's federation as simulated: its own cases, rounds and metrics
        assert_same_run(deployed / "arms" / f"FL_global_fold{fold}", simulated / "arms" / f"FL_global_fold{fold}",
                        results=False)
    assert_same_matrix(deployed, simulated, ["FL_global", *(f"FL_local_{s}" for s in consortium.sites),
                                             *(f"standalone_{s}" for s in consortium.sites)])
    for site in consortium.sites:
        kept = RunDirectory(consortium.kits[site] / "fedseg-state" / "arms" / site / "arms")
        for name, tolerance in ((f"standalone_{site}", 0.0), (f"FL_local_{site}_fold0", WEIGHT_TOLERANCE),
                                (f"FL_local_{site}_fold1", WEIGHT_TOLERANCE)):
            at_site, in_simulation = kept.load_model(name), RunDirectory(simulated).load_model(name)
            for key in in_simulation:
                np.testing.assert_allclose(at_site[key], in_simulation[key], rtol=0, atol=tolerance, err_msg=name)
    downloaded = {p.relative_to(deployed).as_posix() for p in deployed.rglob("*") if p.is_file()}
    assert not any(name.endswith(".pt") and "/global_round_" not in name and "/FL_global" not in name
                   for name in downloaded), downloaded  # no arm's model, no arm's checkpoint
    for site in consortium.sites:  # each standalone model's learning curve came back: scalars per round
        curve_d = RunDirectory(deployed / "arms" / f"standalone_{site}").read_metrics()
        curve_s = RunDirectory(simulated / "arms" / f"standalone_{site}").read_metrics()
        board = EventAccumulator(str(deployed / "tensorboard" / f"standalone_{site}"))  # its curve in TensorBoard
        board.Reload()
        assert [e.step for e in board.Scalars(f"site/{site}/train_loss")] == [r["round"] + 1 for r in curve_s]
        assert [(r["round"], r["site"]) for r in curve_d] == [(r["round"], r["site"]) for r in curve_s] != []
        for d, s in zip(curve_d, curve_s):
            assert d == {"round": d["round"], "site": site, **{k: s[k] for k in CURVE_METRICS if k in s}}
    received = [json.loads(line) for line in (deployed / "received.jsonl").read_text().splitlines()]
    shared = [line for line in received if line["task"] == "share_model"]
    assert len(shared) == 2 * len(consortium.sites) and all(line["verdict"] == "accepted" for line in shared)
    assert all(all(isinstance(v, list) for v in line["params"].values()) for line in shared)  # shapes, no values


@pytest.mark.slow
def test_a_site_that_keeps_its_models_has_them_scored_on_its_own_cases_only(consortium, experiment_file, workspace):
    consortium.restart_site("hospital_c", share_models="none")
    try:
        experiment = experiment_file("arms-kept", rounds=1, arms=["federated", "standalone"])
        ended = run_deployed(consortium, experiment, workspace / "arms-kept-deployed")
        assert ended["state"] == "finished", ended
    finally:
        consortium.restart_site("hospital_c")
    results = json.loads((workspace / "arms-kept-deployed" / "results.json").read_text())
    rows = results["matrix"]["rows"]
    assert rows["standalone_hospital_c"]["hospital_c"]["n"] > 0
    assert rows["standalone_hospital_c"]["hospital_a"]["n"] == rows["standalone_hospital_c"]["hospital_b"]["n"] == 0
    assert all(cell["n"] > 0 for cell in rows["standalone_hospital_a"].values())
    assert set(results["unscored_sites"]) == {f"{site} (standalone_hospital_c)" for site in ("hospital_a",
                                                                                              "hospital_b")}
    assert all("--share-models none" in reason for reason in results["unscored_sites"].values())
    assert "--share-models none" in (workspace / "arms-kept-deployed" / "report.md").read_text()
    received = [json.loads(line) for line in (workspace / "arms-kept-deployed" / "received.jsonl").read_text()
                .splitlines()]
    assert ("share_model", "hospital_c") not in {(line["task"], line["site"]) for line in received}
    run_simulation(load_experiment(experiment), workspace / "arms-kept-simulated")
    simulated = json.loads((workspace / "arms-kept-simulated" / "results.json").read_text())["matrix"]["rows"]
    assert rows["standalone_hospital_c"]["hospital_c"]["mean"] == pytest.approx(
        simulated["standalone_hospital_c"]["hospital_c"]["mean"], abs=1e-6)


@pytest.mark.slow
def test_a_kit_from_another_project_cannot_join_or_submit(consortium, workspace):
    # same project name, host and ports as the real consortium, but its own certificate authority
    project = workspace / "intruders.toml"
    project.write_text(consortium.project_file.read_text().replace('name = "hospital_a"', 'name = "hospital_x"'))
    kits = provision(load_project(project), workspace / "intruder-kits")
    consortium.start_site("hospital_x", kits["hospital_x"], data=consortium.sites["hospital_a"])
    try:
        time.sleep(8)
        session = consortium.session()
        try:
            assert "hospital_x" not in admin.consortium(session)["sites"]
        finally:
            session.close()
        with pytest.raises(UserError, match="cannot log in"):
            admin.connect(read_kit(kits["admin"], "admin"), timeout=5)
    finally:
        consortium.kill("hospital_x")


@pytest.mark.slow
def test_external_validation_scores_a_model_at_every_site_as_its_simulation(consortium, experiment_file, workspace):
    from fedseg.external import evaluate_simulated
    from fedseg.external_deployment import evaluate_deployed

    experiment = load_experiment(experiment_file("external", rounds=1))
    run_simulation(experiment, workspace / "external-trained")
    model = workspace / "external-trained" / "checkpoints" / "FL_global.pt"
    simulated = evaluate_simulated(model, experiment, workspace / "external-simulated", name="outside")
    out = workspace / "external-deployed"
    deployed = evaluate_deployed(model, experiment, out, "test", "outside", consortium.kits["admin"])
    assert deployed["model"] == "outside" and deployed["external"] == simulated["external"]
    assert deployed["overall"]["n_cases"] == simulated["overall"]["n_cases"] > 0
    for site, summary in simulated["sites"].items():
        assert deployed["sites"][site]["mean_dice"] == pytest.approx(summary["mean_dice"], abs=1e-6), site
    received = [json.loads(line) for line in (out / "received.jsonl").read_text().splitlines()]
    assert {r["task"] for r in received} == {"join", "evaluate"}  # nothing trained, the model only scored
    assert all(r["verdict"] == "accepted" for r in received)
    assert "External validation: this run trained nothing" in (out / "report.md").read_text()
    every = evaluate_deployed(model, experiment, workspace / "external-all", "all", "outside_all",  # another run
                              consortium.kits["admin"])
    every_simulated = evaluate_simulated(model, experiment, workspace / "external-all-simulated", "all", "outside_all")
    assert every["external"]["cases"] == "all" and every["overall"]["n_cases"] > deployed["overall"]["n_cases"]
    for site, summary in every_simulated["sites"].items():  # every case of every site, as simulated
        assert every["sites"][site]["n_cases"] == summary["n_cases"] == 10, site
        assert every["sites"][site]["mean_dice"] == pytest.approx(summary["mean_dice"], abs=1e-6), site
    with pytest.raises(UserError, match="other shapes"):  # refused at the admin's, before any site sees it
        wider = experiment_file("external_wide", rounds=1, model={"channels": [8, 16, 32]})
        evaluate_deployed(model, load_experiment(wider), workspace / "external-wide", "test", None,
                          consortium.kits["admin"])


@pytest.mark.slow
def test_sites_that_die_mid_run_are_dropped_and_the_run_finishes(consortium, experiment_file, workspace):
    experiment = experiment_file("dropout", rounds=8, training={"local_steps": 40},
                                 deployment={"round_timeout": 30, "min_responses": 1})
    session, job_id = submit(load_experiment(experiment), consortium.kits["admin"])
    wait_for_round(consortium, "dropout", 1)
    [job_process] = consortium.job_processes("hospital_c")
    os.kill(job_process, signal.SIGKILL)  # the site's job process only; its daemon stays
    wait_for_round(consortium, "dropout", 3)
    consortium.kill("hospital_b")  # the whole site: daemon and job
    started = time.monotonic()
    ended = follow(consortium.kits["admin"], session, job_id, workspace / "dropout-deployed",
                   on_progress=lambda job: None)
    assert ended["state"] == "finished", ended
    assert time.monotonic() - started < 120, "no round may wait much beyond the round timeout"
    metrics = RunDirectory(workspace / "dropout-deployed").read_metrics()
    by_round = {r: {m["site"] for m in metrics if m["round"] == r} for r in range(8)}
    assert by_round[0] == {"hospital_a", "hospital_b", "hospital_c"}
    assert by_round[7] == {"hospital_a"}
    assert "hospital_c" not in by_round[3]
    assert any(m.get("missing_sites") for m in metrics)


@pytest.mark.slow
def test_a_site_killed_and_restarted_rejoins_the_running_job(consortium, experiment_file, workspace):
    import torch

    consortium.restore()  # sites the drop-out test killed come back
    rounds, site = 6, "hospital_a"
    experiment = experiment_file("rejoin", rounds=rounds, training={"local_steps": 10, "optimizer_state": "keep"},
                                 deployment={"round_timeout": 150, "min_responses": 1})
    session, job_id = submit(load_experiment(experiment), consortium.kits["admin"])
    wait_for_round(consortium, "rejoin", 1)
    for pid in consortium.job_processes(site):  # the whole site, as a machine that dies: its job process
        os.kill(pid, signal.SIGKILL)  # (left alone, it would finish its task first)
    consortium.kill(site)  # and its daemon
    state = consortium.kits[site] / "fedseg-state" / "rejoin" / site
    steps_before = int(torch.load(max(state.glob("optimizer_round_*.pt")), weights_only=True)["state"][0]["step"])
    consortium.wait_offline(site)
    wait_for_round(consortium, "rejoin", 2)  # without the site
    # the other sites' job processes pause while the site starts again, so that the run cannot end
    # first on any machine (their daemons still report their jobs: the coordinator waits for them)
    paused = [pid for other in ("hospital_b", "hospital_c") for pid in consortium.job_processes(other)]
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    log, ready = consortium.logs / f"{site}.log", "client runner started"  # FLARE's line: a job process is up
    started_before = log.read_text().count(ready)
    consortium.start_site(site)
    deadline = time.monotonic() + 120
    while log.read_text().count(ready) == started_before and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in paused:
        os.kill(pid, signal.SIGCONT)
    assert log.read_text().count(ready) > started_before, f"the job did not start again at {site}: {log}"
    ended = follow(consortium.kits["admin"], session, job_id, workspace / "rejoin-deployed",
                   on_progress=lambda job: None)
    assert ended["state"] == "finished", ended
    metrics = RunDirectory(workspace / "rejoin-deployed").read_metrics()
    trained = {r: {m["site"] for m in metrics if m["round"] == r and "train_loss" in m} for r in range(rounds)}
    assert site in trained[1] and site not in trained[2]
    assert site in next(m for m in metrics if m["round"] == 2)["missing_sites"]
    back = [r for r in range(3, rounds) if site in trained[r]]
    assert back and back == list(range(back[0], rounds)) and back[0] <= 4, trained  # the round after it is back
    steps_after = sum(m["steps"] for m in metrics if m["site"] == site and m["round"] >= back[0])
    last = max(state.glob("optimizer_round_*.pt"))
    assert int(torch.load(last, weights_only=True)["state"][0]["step"]) == steps_before + steps_after  # resumed


@pytest.mark.slow
def test_coordinator_killed_mid_run_resumes_after_restart(consortium, experiment_file, workspace):
    consortium.restore()  # sites the drop-out test killed come back
    experiment = experiment_file("restart", rounds=6, training={"local_steps": 10})
    session, job_id = submit(load_experiment(experiment), consortium.kits["admin"])
    wait_for_round(consortium, "restart", 2)
    consortium.kill("server")  # kill -9 of the coordinator process
    consortium.start_server()
    # the admin session that submitted the job follows it across the restart
    ended = follow(consortium.kits["admin"], session, job_id, workspace / "restart-deployed",
                   on_progress=lambda job: None)
    assert ended["state"] == "finished", ended
    run_simulation(load_experiment(experiment), workspace / "restart-simulated")
    assert_same_run(workspace / "restart-deployed", workspace / "restart-simulated")


def wait_for_round(consortium: Consortium, experiment: str, round: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if consortium.deployment_state(experiment).get("round", -1) >= round:
            return
        time.sleep(0.2)
    raise TimeoutError(f"round {round} of {experiment} not done after {timeout} s; logs in {consortium.logs}")

