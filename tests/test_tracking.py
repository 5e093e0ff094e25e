"""Watching a run: TensorBoard event files of every arm and a real local MLflow store (no mocks);
neither can stop a run."""

import json
import logging
import math
import socket
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedseg.experiment import ConfigError, parse_experiment
from fedseg.runtime.mlflow_log import TRACKING_FILE, MlflowLog, flat_params
from fedseg.console import running_line
from fedseg.runtime.tracking import SiteProgress, TensorBoardLog, Tracked, TrackingConfig, check_uri, round_scalars
from fedseg.simulate import run_simulation
from fedseg.study import prepare_run_dir
from fedseg.runtime.run_directory import RunDirectory
from tiny_experiment import tiny_experiment


def experiment(tmp_path, **tracking):
    return parse_experiment(tiny_experiment(tmp_path, rounds=2, n_cases=6, tracking=tracking,
                                            training={"local_steps": 1}))


def scalars(folder):
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


@pytest.mark.slow
def test_every_arm_goes_to_tensorboard_and_mlflow(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow's own file store, as a user may run it
    store = f"file://{tmp_path / 'mlruns'}"
    run_dir = tmp_path / "run"
    exp = parse_experiment({**tiny_experiment(tmp_path, rounds=2, n_cases=6, training={"local_steps": 1},
                                              tracking={"mlflow_uri": store}), "arms": ["federated", "standalone"]})
    results = run_simulation(exp, run_dir)
    sites = [spec.name for spec in exp.sites]
    assert sorted(p.name for p in (run_dir / "tensorboard").iterdir()) == sorted(
        ["FL_global", *(f"standalone_{s}" for s in sites)])

    board = scalars(run_dir / "tensorboard" / "FL_global")
    lines = [r for r in metrics(run_dir) if "site" in r]
    for site in sites:
        logged = [(r["round"] + 1, r["train_loss"]) for r in lines if r["site"] == site]
        assert [step for step, _ in board[f"site/{site}/train_loss"]] == [1, 2]
        assert [v for _, v in board[f"site/{site}/train_loss"]] == pytest.approx([v for _, v in logged], rel=1e-6)
        assert f"site/{site}/aggregation_weight" in board and f"site/{site}/global_val_dice" in board
    assert [step for step, _ in board["global/round_seconds"]] == [1, 2]
    assert "global/val_dice" in board
    alone = scalars(run_dir / "tensorboard" / f"standalone_{sites[0]}")  # the same tag, another run: overlaid
    assert [step for step, _ in alone[f"site/{sites[0]}/train_loss"]] == [1, 2]

    client = MlflowClient(store)
    found = client.search_runs([client.get_experiment_by_name("fedseg").experiment_id])
    assert len(found) == 1  # every arm logs into the run's one MLflow run
    run = found[0]
    assert run.info.run_name == "tiny" and run.info.status == "FINISHED"
    assert run.data.params["training.lr"] == "0.01" and run.data.params["sites"] == ",".join(sites)
    history = client.get_metric_history(run.info.run_id, f"site/{sites[0]}/train_loss")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx([v for _, v in board[f"site/{sites[0]}/train_loss"]], rel=1e-6)
    assert client.get_metric_history(run.info.run_id, f"standalone_{sites[0]}/site/{sites[0]}/train_loss")
    assert run.data.metrics["test/mean_dice"] == pytest.approx(results["overall"]["mean_dice"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "report.html", "results.json", "cross_site.csv", "checkpoints"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/FL_global.pt"]
    assert json.loads((run_dir / TRACKING_FILE).read_text())["run_id"] == run.info.run_id


@pytest.mark.slow
def test_a_tracking_server_that_is_down_is_one_warning_and_the_run_goes_on(tmp_path, caplog):
    uri = f"http://127.0.0.1:{free_port()}"
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="fedseg"):
        results = run_simulation(experiment(tmp_path, mlflow_uri=uri), run_dir)
    assert (run_dir / "report.md").exists() and results["rounds"] == 2
    warned = [r.getMessage() for r in caplog.records if "MLflow" in r.getMessage()]
    assert len(warned) == 1 and uri in warned[0] and "goes on" in warned[0]
    assert "global/round_seconds" in scalars(run_dir / "tensorboard" / "FL_global")  # TensorBoard unaffected


def test_tensorboard_can_be_turned_off(tmp_path):
    for on in (False, True):
        watched = Tracked(None, TrackingConfig(tensorboard=on), "exp", {}, tmp_path / "arms" / "standalone_a", 1)
        watched.round_finished(0, [{"round": 0, "site": "a", "train_loss": 0.5}])
        assert (tmp_path / "tensorboard" / "standalone_a").exists() == on


def test_an_unwritable_tensorboard_folder_is_one_warning(tmp_path, caplog):
    (tmp_path / "tensorboard").write_text("a file where the folder should be")
    board = TensorBoardLog(tmp_path / "tensorboard" / "FL_global", rounds=3)
    with caplog.at_level(logging.WARNING, logger="fedseg"):
        for step in (1, 2, 3):
            board.write(step, {"global/val_dice": 0.5})
    assert len(caplog.records) == 1 and "run goes on" in caplog.records[0].getMessage()


def test_a_resumed_run_logs_into_the_same_mlflow_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    config = TrackingConfig(mlflow_uri=f"file://{tmp_path / 'mlruns'}", mlflow_experiment="watch")
    first = MlflowLog(config, "exp", {"training": {"lr": 0.1}}, tmp_path)
    first.round("FL_global", 1, {"global/val_dice": 0.25})
    again = MlflowLog(config, "exp", {"training": {"lr": 0.1}}, tmp_path)  # a new process, same run directory
    again.round("FL_global", 2, {"global/val_dice": 0.5, "global/round_seconds": math.nan})
    client = MlflowClient(config.mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("watch").experiment_id])
    assert len(runs) == 1
    assert [(m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, "global/val_dice")] == [
        (1, 0.25), (2, 0.5)]
    assert "global/round_seconds" not in runs[0].data.metrics  # NaN is not a value to plot


def test_changing_how_a_run_is_watched_does_not_block_resume(tmp_path):
    run_dir = RunDirectory(tmp_path / "run")
    prepare_run_dir(run_dir, experiment(tmp_path), resume=False)
    prepare_run_dir(run_dir, experiment(tmp_path, tensorboard=False, mlflow_uri="http://mlflow.example:5000"),
                    resume=True)
    assert "mlflow.example" in (tmp_path / "run" / "experiment.toml").read_text()


def test_round_scalars_skip_rejected_sites_and_values_that_are_not_numbers():
    records = [{"round": 0, "site": "a", "train_loss": 0.5, "val_dice": math.nan, "aggregation_weight": 0.75,
                "global_val_dice": 0.25, "round_seconds": 2.0},
               {"round": 0, "site": "b", "train_loss": 0.7, "global_val_dice": 0.75, "seconds": True},
               {"round": 0, "site": "c", "rejected": "NaN values", "train_loss": 9.0}]
    assert round_scalars(records) == {
        "site/a/train_loss": 0.5, "site/a/aggregation_weight": 0.75, "site/a/global_val_dice": 0.25,
        "site/b/train_loss": 0.7, "site/b/global_val_dice": 0.75, "global/val_dice": 0.5,
        "global/round_seconds": 2.0, "global/accepted_sites": 2.0, "global/rejected_sites": 1.0}


def test_params_are_the_resolved_experiment_flattened(tmp_path):
    params = flat_params(experiment(tmp_path).to_dict())
    assert params["training.lr"] == "0.01" and params["plan.name"] == "fedavg"
    assert params["model.channels"] == "[4, 8, 16]" and params["sites"] == "hospital_a,hospital_b,hospital_c"
    assert params["sites.hospital_b.path"].endswith("hospital_b")
    assert all(len(value) <= 1000 for value in params.values())


@pytest.mark.parametrize("uri, problem", [
    ("ftp://host/x", "http:// or https://"), ("http://user:secret@host:5000", "credentials"),
    ("http:///nohost", "names no host"), ("http://host 5000", "without spaces"), ("x" * 600, "at most"),
    ("http://[::1", "not a URI")])
def test_unusable_tracking_uris_are_refused_with_the_reason(tmp_path, uri, problem):
    with pytest.raises(ConfigError, match=problem):
        experiment(tmp_path, mlflow_uri=uri)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), st.from_regex(r"(https?|file|ftp):(//)?[^/]{0,30}(/.{0,20})?", fullmatch=True)))
def test_any_uri_is_accepted_or_refused_with_a_value_error(uri):
    try:
        check_uri(uri)
    except ValueError:
        return
    parts = urlsplit(uri)
    assert parts.scheme in ("http", "https", "file") and uri.isprintable() and not any(c.isspace() for c in uri)
    assert parts.scheme == "file" or (parts.hostname and parts.username is None and parts.password is None)


def test_status_shows_which_sites_of_the_running_round_have_answered():
    published = []
    progress = SiteProgress(lambda **state: published.append(json.loads(json.dumps(state))))
    progress.round_started(0, ["b", "a"])
    progress.site_trained(0, "a", None)
    progress.site_trained(0, "stranger", None)  # not targeted this round: not shown
    progress.round_finished(0, [{"round": 0, "site": "a"}, {"round": 0, "site": "b"}])
    progress.round_started(1, ["a", "b"])
    assert [state.get("current", {}).get("sites") for state in published] == [
        {"a": "training", "b": "training"}, {"a": "trained", "b": "training"}, None,
        {"a": "training", "b": "training"}]
    assert published[-1]["round"] == 0 and len(published[-1]["last"]) == 2  # the finished round stays shown
    started = published[1]["current"]["started"]
    assert running_line(published[1], started + 42) == "round 1 running for 42 s: a trained, b training"
    assert running_line(published[2], started) is None
    assert running_line({"current": {"round": "x", "sites": {"[b]a": "t"}}}, 0) == "round ? running: \\[b]a t"


def test_a_curve_that_ran_elsewhere_is_replayed_round_by_round(tmp_path):
    curve = [{"round": 1, "site": "a", "train_loss": 0.25}, {"round": 0, "site": "a", "train_loss": 0.5}]
    Tracked(None, TrackingConfig(), "exp", {}, tmp_path / "arms" / "standalone_a", 2).replay(curve)
    assert scalars(tmp_path / "tensorboard" / "standalone_a")["site/a/train_loss"] == [(1, 0.5), (2, 0.25)]
