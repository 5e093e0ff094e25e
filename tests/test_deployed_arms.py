"""The comparison arms in deployment without processes: what ``deployable`` admits, and a site's
checks of the coordinator's arm tasks (hostile input: only ``UpdateRejected`` or a reply comes out).
The deployed runs themselves are in test_deployment.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nvflare.app_common.abstract.fl_model import FLModel

from fedseg.deployed_arms import CURVE_METRICS, SiteArms, check_curve, site_models
from fedseg.deployment import deployable
from fedseg.errors import UserError
from fedseg.experiment import parse_experiment
from fedseg.plans.checks import UpdateRejected
from fedseg.runtime.flare import wire
from fedseg.types import Update
from tiny_experiment import tiny_experiment


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("arms-data")


def experiment(root: Path, **sections):
    return parse_experiment(tiny_experiment(root, n_cases=5, **sections))


def test_folds_are_deployable_and_their_fl_local_is_an_ensemble_of_the_folds(data_root):
    folds = experiment(data_root, arms=["federated", "standalone"], federation={"folds": 3, "fine_tune_epochs": 1})
    assert deployable(folds) is folds
    assert site_models(folds, "hospital_a") == ["FL_local_hospital_a", "standalone_hospital_a"]


def test_standalone_and_fine_tuning_are_deployable(data_root):
    both = experiment(data_root, arms=["federated", "standalone"], federation={"fine_tune_epochs": 1})
    assert deployable(both) is both
    assert site_models(both, "hospital_a") == ["FL_local_hospital_a", "standalone_hospital_a"]
    assert site_models(experiment(data_root), "hospital_a") == []
    fedbn = experiment(data_root, plan={"name": "fedavg", "local_norm": True}, model={"norm": "batch"})
    assert site_models(fedbn, "x") == ["FL_local_x"]  # FL_global with the site's own normalisation


@pytest.mark.parametrize("sections, message", [
    ({"arms": ["federated", "centralized"]}, "centralized arm needs every site's data in one place"),
    ({"arms": ["standalone"]}, "runs the 'federated' arm"),
])
def test_what_deployment_cannot_run_is_refused_with_what_to_set(data_root, sections, message):
    with pytest.raises(UserError, match=message):
        deployable(experiment(data_root, **sections))


def reject_model(weights) -> None:
    raise UpdateRejected("global model: parameter names differ")  # as SiteApp.check_model does with these


@pytest.fixture
def kept(data_root, tmp_path) -> SiteArms:
    """hospital_a's arms with one trained standalone model in its state folder (the model's values
    do not matter to the checks)."""
    app = SimpleNamespace(name="hospital_a", check_model=reject_model)
    arms = SiteArms(experiment(data_root, arms=["federated", "standalone"]), None, app, tmp_path / "state", "none")
    arms.run_dir.create()
    arms.run_dir.save_model("standalone_hospital_a", {"w": np.ones((2, 2), np.float32)})
    return arms


def test_a_site_that_keeps_its_models_refuses_to_hand_them_over(kept):
    with pytest.raises(UpdateRejected, match="keeps its models"):
        kept.handle("share_model", {}, {"model": "standalone_hospital_a"})
    kept.share = "score"
    np.testing.assert_array_equal(kept.handle("share_model", {}, {"model": "standalone_hospital_a"})["w"], 1.0)


@pytest.mark.parametrize("task, payload, message", [
    ("score_held", None, "table of instructions"),
    ("score_held", {"model": "FL_global"}, "holds no model named 'FL_global'"),
    ("share_model", {"model": "../../etc/passwd"}, "holds no model"),
    ("score_held", {"model": ["standalone_hospital_a"]}, "holds no model"),
    ("arms", {"resume": "yes"}, "resume = true/false"),
    ("arms", {"resume": False}, "parameter names differ"),
])
def test_a_site_refuses_arm_tasks_it_cannot_carry_out(kept, task, payload, message):
    with pytest.raises(UpdateRejected, match=message):
        kept.handle(task, {}, payload)


def test_a_model_not_trained_yet_is_named(kept):
    kept.run_dir.checkpoints.joinpath("standalone_hospital_a.pt").unlink()
    with pytest.raises(UpdateRejected, match="has not trained standalone_hospital_a yet"):
        kept.handle("share_model", {}, {"model": "standalone_hospital_a"})


def test_an_unknown_share_setting_is_refused(data_root, tmp_path):
    with pytest.raises(UserError, match="--share-models must be one of score, none"):
        SiteArms(experiment(data_root), None, SimpleNamespace(name="a"), tmp_path, "all")


json_like = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                         lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                     max_size=4), max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(task=st.sampled_from(wire.ARM_TASKS), payload=json_like)
def test_any_payload_is_answered_or_rejected_with_a_reason(kept, task, payload):
    try:
        kept.handle(task, {}, payload)
    except UpdateRejected as exc:
        assert str(exc)


@settings(max_examples=150, deadline=None)
@given(meta=st.dictionaries(st.sampled_from(["models", "shared", "cases", "x", wire.ENSEMBLE]), json_like, max_size=3),
       params=st.none() | st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
def test_a_sites_arm_replies_decode_or_fail_cleanly(meta, params):
    """The coordinator's decoding of ``arms``/``share_model``/``score_held`` replies: a value, or the
    errors the dispatcher turns into a rejected reply."""
    for task in wire.ARM_TASKS:
        try:
            reply = wire.reply_from_wire(task, FLModel(params=params, meta=meta, metrics={"n": 1.0}))
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
        if task == "arms":
            assert all(isinstance(n, str) for n in reply["models"]) and isinstance(reply["shared"], bool)
        if task == "share_model":
            assert isinstance(reply, Update) and reply.n_samples == 0


def test_arm_replies_survive_the_wire():
    weights = {"w": np.arange(4, dtype=np.float32)}
    shared = wire.reply_from_wire("share_model", wire.reply_to_wire("share_model", weights))
    np.testing.assert_array_equal(shared.weights["w"], weights["w"])
    arms = {"models": ["FL_local_a", "standalone_a"], "shared": False,
            "curves": {"standalone_a": [{"round": 0, "train_loss": 0.5, "val_dice": 0.25}]}}
    assert wire.reply_from_wire("arms", wire.reply_to_wire("arms", arms)) == arms


def test_a_learning_curve_becomes_the_sites_metrics_records():
    points = [{"round": 0, "train_loss": 1.5, "val_dice": 0.2}, {"round": 1, "train_loss": 0.9}]
    assert check_curve(points, "hospital_a", 2) == [{**p, "site": "hospital_a"} for p in points]


@pytest.mark.parametrize("points, message", [
    ([{"round": 0}, {"round": 0}], "distinct"),
    ([{"round": 2}], "in 0..1"),
    ([{"round": True}], "distinct and in"),
    ([{"round": 0}] * 3, "at most 2 rounds"),
    ([{"round": 0, "val_dice": 1.5}], "'val_dice' = 1.5 is not a finite number in"),
    ([{"round": 0, "train_loss": float("inf")}], "'train_loss' = inf"),
    ([{"round": 0, "global_val_dice": "0.5"}], "must be a number"),
    ([{"round": 0, "train_loss": float("nan")}], "train_loss"),
    ([{"round": 0, "case": "patient-7"}], "round and train_loss"),  # nothing else leaves the site
    ({"round": 0}, "a list"),
])
def test_a_hostile_learning_curve_is_refused(points, message):
    with pytest.raises(UpdateRejected, match=message):
        check_curve(points, "hospital_a", 2)


@settings(max_examples=150, deadline=None)
@given(points=json_like)
def test_any_learning_curve_is_checked_or_refused(points):
    try:
        checked = check_curve(points, "s", 3)
    except UpdateRejected:
        return
    for point in checked:
        assert set(point) <= {"round", "site", *CURVE_METRICS} and 0 <= point["round"] < 3


def test_the_share_setting_reaches_the_site_process_and_only_the_operator_sets_it(tmp_path, monkeypatch):
    from consortium_harness import write_project
    from fedseg.consortium import run_site
    from fedseg.runtime.flare.processes import SHARE_MODELS_ENV, site_environment
    from fedseg.runtime.flare.provision import load_project, provision

    monkeypatch.setenv(SHARE_MODELS_ENV, "none")  # left over in the operator's shell: not this start's choice
    assert site_environment(tmp_path)[SHARE_MODELS_ENV] == "score"
    assert site_environment(tmp_path, share_models="none")[SHARE_MODELS_ENV] == "none"
    kits = provision(load_project(write_project(tmp_path / "p.toml", "p", ["hospital_a"], [1, 2])), tmp_path / "kits")
    with pytest.raises(UserError, match="--share-models must be one of score, none"):
        run_site(kits["hospital_a"], tmp_path, share_models="some")


def test_an_ensemble_and_its_fold_survive_the_wire():
    members = [{"w": np.full(3, i, np.float32), "b": np.zeros(1, np.float32)} for i in range(3)]
    model = wire.weights_model(members, meta={wire.FOLD: 2})
    assert wire.fold_from_wire(model.meta) == 2 and wire.fold_from_wire({}) is None
    back = wire.model_from_params(model.params, model.meta)
    assert [sorted(m) for m in back] == [["b", "w"]] * 3
    for i, member in enumerate(back):
        np.testing.assert_array_equal(member["w"], i)
    shared = wire.reply_from_wire("share_model", wire.reply_to_wire("share_model", members))
    assert isinstance(shared.weights, list) and len(shared.weights) == 3
    single = {"w": np.ones(2, np.float32)}
    assert wire.model_from_params(wire.weights_model(single).params, {}) == single


@pytest.mark.parametrize("params, meta, message", [
    ({"ensemble/0/w": 1, "ensemble/2/w": 1}, {"ensemble": 2}, "names no member"),
    ({"ensemble/0/w": 1, "w": 1}, {"ensemble": 2}, "names no member"),
    ({"ensemble/0/w": 1}, {"ensemble": 2}, "has no parameters"),
    ({"ensemble/0/": 1, "ensemble/1/w": 1}, {"ensemble": 2}, "names no member"),
    ({}, {"ensemble": 1}, "2 to 100 members"),
    ({}, {"ensemble": 10**9}, "2 to 100 members"),
    ({}, {"ensemble": True}, "2 to 100 members"),
])
def test_a_hostile_ensemble_is_refused(params, meta, message):
    with pytest.raises(ValueError, match=message):
        wire.model_from_params(params, meta)


@settings(max_examples=200, deadline=None)
@given(params=st.dictionaries(st.text(max_size=12) | st.sampled_from(["ensemble/0/w", "ensemble/1/w", "ensemble/x/w"]),
                              st.integers(), max_size=4), meta=json_like)
def test_any_ensemble_message_decodes_to_whole_members_or_fails_cleanly(params, meta):
    try:
        model = wire.model_from_params(params, meta)
        fold = wire.fold_from_wire(meta)
    except ValueError:
        return
    assert fold is None or 0 <= fold < wire.MAX_MEMBERS
    if isinstance(model, list):
        assert 2 <= len(model) <= wire.MAX_MEMBERS and all(model)
        assert sum(len(m) for m in model) == len(params)


@pytest.mark.parametrize("fold", [-1, 100, True, "1", 1.0])
def test_a_tasks_fold_must_be_a_whole_number_in_range(fold):
    with pytest.raises(ValueError, match="fold must be a whole number"):
        wire.fold_from_wire({wire.FOLD: fold})


def test_a_site_with_folds_needs_one_fl_global_per_fold_and_hands_over_its_fl_local_ensemble(data_root, tmp_path):
    folds = experiment(data_root, federation={"folds": 2, "fine_tune_epochs": 1})
    app = SimpleNamespace(name="hospital_a", check_model=lambda weights: None)
    arms = SiteArms(folds, None, app, tmp_path / "state", "score", fold_app=lambda fold: app)
    with pytest.raises(UpdateRejected, match="2 model\\(s\\), one per fold; 1 arrived"):
        arms.handle("arms", {"w": np.ones(1)}, {"resume": False})
    arms.run_dir.create()
    arms.run_dir.save_model("FL_local_hospital_a_fold0", {"w": np.zeros(2, np.float32)})
    with pytest.raises(UpdateRejected, match="has not trained FL_local_hospital_a yet"):  # one fold is not the model
        arms.handle("share_model", {}, {"model": "FL_local_hospital_a"})
    arms.run_dir.save_model("FL_local_hospital_a_fold1", {"w": np.ones(2, np.float32)})
    shared = arms.handle("share_model", {}, {"model": "FL_local_hospital_a"})
    assert [float(m["w"][0]) for m in shared] == [0.0, 1.0]
