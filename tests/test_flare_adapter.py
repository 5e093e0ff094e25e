"""The FLARE adapter's pieces that need no running consortium: round policy, wire format, job
folder, local settings of the kits, requeueing after a crash."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedseg.experiment import ConfigError, parse_experiment
from nvflare.app_common.abstract.fl_model import FLModel

from fedseg.deployment import COMPONENTS, Coordinator, Site
from fedseg.runtime.flare import processes, wire
from fedseg.runtime.site_app import pseudonymous
from fedseg.runtime.flare.job import write_job
from fedseg.runtime.flare.provision import Network, load_project, provision, read_kit
from fedseg.runtime.round_policy import RoundPolicy
from fedseg.types import CaseMetrics, RoundConfig, Update


def test_round_policy_needs_all_sites_unless_told_otherwise():
    assert RoundPolicy().needed(3) == 3 and not RoundPolicy().accepts(3, 2)
    assert RoundPolicy(min_responses=2).accepts(3, 2) and not RoundPolicy(min_responses=2).accepts(3, 1)
    assert RoundPolicy(min_responses=5).needed(2) == 2  # never more than were asked
    assert not RoundPolicy(min_responses=1).accepts(0, 0)  # a round without any update is no round
    with pytest.raises(ValueError, match="min_responses"):
        RoundPolicy(min_responses=0)


def test_deployment_table_is_checked_like_the_rest_of_the_experiment(tmp_path):
    base = {"task": {"labels": {"background": 0, "lesion": 1}}, "sites": [{"name": "a", "path": str(tmp_path)}]}
    assert parse_experiment({**base, "deployment": {"round_timeout": 30, "min_responses": 1}}).deployment == \
        RoundPolicy(round_timeout=30, min_responses=1)
    with pytest.raises(ConfigError, match=r"\[deployment\] unknown key"):
        parse_experiment({**base, "deployment": {"timeout": 30}})


def test_wire_round_trip_keeps_weights_configs_counts_and_scores():
    update = Update({"w": np.arange(4, dtype=np.float32), "n": np.array(3)}, n_samples=7, metrics={"val_dice": 0.5})
    back = wire.reply_from_wire("train", wire.reply_to_wire("train", update))
    np.testing.assert_array_equal(back.weights["w"], update.weights["w"])
    assert back.n_samples == 7 and back.metrics == {"val_dice": 0.5}
    config = RoundConfig(round=2, seed=11, local_epochs=None, local_steps=5, extra={"proximal_mu": 0.01})
    assert wire.round_config_from_wire(wire.round_config_to_wire(config)) == config
    assert wire.reply_from_wire("join", wire.reply_to_wire("join", {"train": 3, "val": 1, "test": 2})) == \
        {"train": 3, "val": 1, "test": 2}
    cases = pseudonymous("site_a", [CaseMetrics("patient_smith_b", {"x": 0.5}),
                                    CaseMetrics("patient_jones_a", {"x": float("nan")})])
    assert [c.case for c in cases] == ["site_a-case-000", "site_a-case-001"]  # sorted order, no names
    sent = wire.reply_to_wire("evaluate", cases)
    assert "patient" not in json.dumps(sent.meta)
    back = wire.reply_from_wire("evaluate", sent)
    assert back[1].dice == {"x": 0.5} and np.isnan(back[0].dice["x"])


@pytest.mark.parametrize("task, model", [
    ("train", FLModel(params={"w": "not an array"}, meta={"n_samples": 3})),
    ("train", FLModel(params={"w": np.zeros(2)}, meta={})),
    ("join", FLModel(meta={"declared": [1, 2]})),
    ("evaluate", FLModel(meta={"cases": [{"case": "x", "dice": {"a": "high"}, "hd95": {}, "bbox_coverage": {},
                                          "failed": []}]})),
    ("validate", FLModel(metrics={1: 0.5})),
])
def test_replies_that_do_not_fit_the_wire_format_are_errors_not_crashes(task, model):
    with pytest.raises((ValueError, TypeError, KeyError)):
        wire.reply_from_wire(task, model)


def test_job_folder_names_only_fedseg_components(tmp_path):
    job = write_job(tmp_path / "job", "exp", 'name = "exp"', resume=True, min_sites=2,
                    network=Network(task_poll_interval_s=0.2), components=COMPONENTS)
    meta = json.loads((job / "meta.json").read_text())
    server = json.loads((job / "app" / "config" / "config_fed_server.json").read_text())
    client = json.loads((job / "app" / "config" / "config_fed_client.json").read_text())
    assert meta["min_clients"] == 2
    assert server["server"]["task_request_interval"] == 0.2 and client["default_task_fetch_interval"] == 0.2
    assert server["workflows"][0]["path"] == COMPONENTS.controller and server["workflows"][0]["args"]["resume"]
    assert client["executors"][0]["executor"]["path"] == COMPONENTS.executor
    # the job names classes only; no argument names anything to import (findings: "builtins:exec")
    assert set(server["workflows"][0]["args"]) == {"experiment", "resume"}
    assert set(client["executors"][0]["executor"]["args"]) == {"experiment", "run_name"}
    assert not (job / "app" / "custom").exists()  # no code travels with a job


@pytest.fixture
def kits(tmp_path):
    project = tmp_path / "p.toml"
    project.write_text('name = "p"\n[coordinator]\nhost = "localhost"\n[[sites]]\nname = "a"\n'
                       '[[admins]]\nname = "me@lab.org"\n[network]\nheartbeat_timeout_s = 7.0\n')
    return provision(load_project(project), tmp_path / "kits")


def test_local_settings_allow_fedseg_and_tune_the_network(kits):
    server, site = read_kit(kits["coordinator"], "server"), read_kit(kits["a"], "site")
    assert server.network == Network(heartbeat_timeout_s=7.0)
    processes.configure_server(server, COMPONENTS.controller)
    processes.configure_site(site, COMPONENTS.executor)
    server_settings = json.loads((server.root / "local" / "resources.json").read_text())
    site_settings = json.loads((site.root / "local" / "resources.json").read_text())
    assert server_settings["class_allow_list"] == [COMPONENTS.controller]
    assert site_settings["class_allow_list"] == [COMPONENTS.executor]
    assert server_settings["servers"][0]["heart_beat_timeout"] == 7.0
    assert server_settings["servers"][0]["task_request_interval"] == 0.1
    job_store = next(c for c in server_settings["components"] if c["id"] == "job_manager")["args"]["uri_root"]
    assert job_store.startswith(str(server.root))  # not /tmp: jobs survive a reboot
    assert "compression" not in site_settings["client"]


def test_jobs_left_running_by_a_crash_are_queued_again(kits):
    from nvflare.app_common.storages.filesystem_storage import FilesystemStorage

    server = read_kit(kits["coordinator"], "server")
    store, root = FilesystemStorage(), server.root / "jobs-storage"
    for job, status in (("j-running", "RUNNING"), ("j-done", "FINISHED:COMPLETED")):
        store.create_object(str(root / job), b"", {"status": status}, overwrite_existing=True)
        (root / job / "scheduled").write_text("")
    assert processes.requeue_interrupted_jobs(server) == ["j-running"]
    assert store.get_meta(str(root / "j-running"))["status"] == "SUBMITTED"
    assert not (root / "j-running" / "scheduled").exists()
    assert store.get_meta(str(root / "j-done"))["status"] == "FINISHED:COMPLETED"


def test_a_job_cannot_name_a_factory_for_the_coordinator_or_the_sites_to_call():
    """Finding 4: a job with coordinator_factory = "builtins:exec" ran code on the coordinator.
    The components take the experiment text and nothing that names code."""
    with pytest.raises(TypeError):
        Coordinator(experiment='name = "x"', app_factory="builtins:exec")
    with pytest.raises(TypeError):
        Site(experiment='name = "x"', app_factory="builtins:exec")


def test_job_arguments_of_the_wrong_type_or_name_are_refused():
    """Hostile review: 'resume = "no"' counted as true, and a job could set the wait loops' period."""
    with pytest.raises(TypeError):
        Coordinator(experiment='name = "x"', resume="no")
    with pytest.raises(TypeError):
        Coordinator(experiment='name = "x"', task_check_period=1e-9)
    with pytest.raises(TypeError):
        Site(experiment=["not", "text"])


def test_submitters_are_warned_about_sites_whose_weight_rests_on_their_word():
    from fedseg.deployment import unbounded_sites

    base = {"task": {"labels": {"background": 0, "lesion": 1}, "spatial_dims": 2},
            "sites": [{"name": "a", "path": "/x", "cases": 40}, {"name": "b", "path": "/y"}]}
    assert unbounded_sites(parse_experiment(base)) == ["b"]
    assert unbounded_sites(parse_experiment({**base, "plan": {"name": "fedavg", "weighted_by": "uniform"}})) == []
    assert unbounded_sites(parse_experiment({**base, "plan": {"name": "cyclic"}})) == []
