"""Hostile-review tests of issue 11's deployed arms (what a site sends back about its own models)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, strategies as st

from fedseg.deployed_arms import check_curve
from fedseg.plans.checks import UpdateRejected


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("key", ["train_loss", "val_dice", "global_val_dice"])
def test_a_curve_with_a_non_finite_value_is_refused(key, value):
    # a site's own side drops non-finite values, so only a forged curve carries one; it must not
    # reach the coordinator's metrics.jsonl (json writes it as Infinity/NaN, which is not JSON)
    with pytest.raises(UpdateRejected, match=key):
        check_curve([{"round": 0, key: value}], "site-a", 3)


@given(st.lists(st.fixed_dictionaries({}, optional={"train_loss": st.floats(allow_nan=True, allow_infinity=True),
                                                   "val_dice": st.floats(allow_nan=True, allow_infinity=True)}),
                max_size=3))
def test_an_accepted_curve_holds_only_finite_values_in_range(points):
    points = [{"round": i, **p} for i, p in enumerate(points)]
    try:
        kept = check_curve(points, "site-a", 3)
    except UpdateRejected:
        return
    for point in kept:
        assert math.isfinite(point.get("train_loss", 0.0)) and point.get("train_loss", 0.0) >= 0
        assert 0.0 <= point.get("val_dice", 0.0) <= 1.0
        assert point["site"] == "site-a"


def test_a_site_never_contacts_the_jobs_mlflow_server(tmp_path):
    # the site trains its standalone arm with the simulation's round engine, whose observer logs to
    # the experiment's [tracking] mlflow_uri: a job must not make a hospital's site process connect
    # to a server it names (MLflow is the coordinator's alone); TensorBoard stays on the site's disk
    from types import SimpleNamespace

    from fedseg.deployed_arms import SiteArms
    from fedseg.experiment import parse_experiment
    from fedseg.study import run_identity
    from tiny_experiment import tiny_experiment

    given = parse_experiment(tiny_experiment(tmp_path, n_cases=5, arms=["federated", "standalone"],
                                             tracking={"mlflow_uri": "http://127.0.0.1:9"}))
    assert given.tracking.mlflow_uri == "http://127.0.0.1:9"
    arms = SiteArms(given, None, SimpleNamespace(name="hospital_a"), tmp_path / "state", "score")
    assert arms.experiment.tracking.mlflow_uri is None
    assert arms.experiment.tracking.tensorboard == given.tracking.tensorboard
    assert run_identity(arms.experiment) == run_identity(given)  # the same models, bit for bit


def test_a_jobs_model_file_is_not_unpacked_beyond_the_networks_size(tmp_path):
    # the evaluate job's fedseg_model.npz comes from the submitter: a compressed array far larger
    # than the network (a zip bomb) must be refused from the archive's listing, before it is read
    import numpy as np

    from fedseg.errors import UserError
    from fedseg.external_deployment import read_model

    template = {"w": np.zeros((2, 2), np.float32)}
    path = tmp_path / "fedseg_model.npz"
    np.savez_compressed(path, w=np.zeros((4096, 4096), np.float32))  # 64 MiB unpacked, a few KiB packed
    loaded = []
    original = np.lib.npyio.NpzFile.__getitem__
    np.lib.npyio.NpzFile.__getitem__ = lambda self, key: loaded.append(key) or original(self, key)
    try:
        with pytest.raises(UserError, match="w"):
            read_model(path, template)
    finally:
        np.lib.npyio.NpzFile.__getitem__ = original
    assert loaded == []
    np.savez(path, w=np.ones((2, 2), np.float32))
    assert read_model(path, template)["w"].sum() == 4


def test_a_job_logs_to_mlflow_only_on_a_server_the_coordinators_operator_allows(tmp_path, monkeypatch):
    """The MLflow client sends the coordinator's credentials to the server it is given, and the job
    names that server: the coordinator keeps the job's mlflow_uri only if its operator lists it."""
    from fedseg.deployment import MLFLOW_SERVERS_ENV, allowed_tracking
    from fedseg.experiment import parse_experiment
    from tiny_experiment import tiny_experiment

    job = parse_experiment(tiny_experiment(tmp_path, tracking={"mlflow_uri": "https://collector.example:8443"}))
    warnings: list[str] = []
    monkeypatch.delenv(MLFLOW_SERVERS_ENV, raising=False)
    assert allowed_tracking(job, warnings.append).tracking.mlflow_uri is None
    assert "collector.example" in warnings[0] and MLFLOW_SERVERS_ENV in warnings[0]
    monkeypatch.setenv(MLFLOW_SERVERS_ENV, "mlflow.hospital.org:5000, collector.example")
    assert allowed_tracking(job, warnings.append).tracking.mlflow_uri == "https://collector.example:8443"
    monkeypatch.setenv(MLFLOW_SERVERS_ENV, "collector.example:5000")  # another port is another server
    assert allowed_tracking(job, warnings.append).tracking.mlflow_uri is None
    assert len(warnings) == 2
