"""Hostile review of issue 12: each test shows a problem found in review (and now fixed)."""

from pathlib import Path

import numpy as np
import pytest

from fedseg.plans.scaffold import Scaffold, split_controls
from fedseg.runtime.intake import GuardConfig, RoundIntake
from fedseg.runtime.records import round_records
from fedseg.types import CONTROL_PREFIX, Update

C = CONTROL_PREFIX
SITES = ["a", "b", "c", "d", "e"]
START = {"w": np.array([[0.5, -1.0, 2.0], [0.0, 3.0, -0.25]]), "b": np.array([0.75]),  # no 0-d: see shrink
         "count": np.array(10, dtype=np.int64)}
DECLARED = {s: {"train": 9, "val": 0, "test": 0} for s in SITES}


def _reply(sent, site, model_step, control_step):
    """A SCAFFOLD reply moving the model by ``model_step`` and the control by ``control_step`` per value."""
    model, c = split_controls(sent)
    rng = np.random.default_rng(ord(site))
    weights = {k: np.asarray(model[k] + model_step * rng.choice([-1.0, 1.0], np.shape(model[k])))
               for k in ("w", "b")}
    weights["count"] = np.asarray(model["count"] + 1)
    weights |= {C + k: np.asarray(c[k] + control_step * rng.choice([-1.0, 1.0], np.shape(c[k]))) for k in c}
    return Update(weights, 3)


def _intake(history=(), control_history=()):
    plan = Scaffold(seed=0, weighted_by="uniform", sites=len(SITES))
    sent = plan.outgoing(0, START)
    guard = GuardConfig(norm_factor=5.0, norm_action="reject")
    return plan, sent, RoundIntake(plan.aggregation(0, sent), sent, DECLARED, guard, list(history),
                                   list(control_history))


def test_scaffold_controls_do_not_widen_the_norm_guard_for_the_model():
    """An honest SCAFFOLD reply moves its control far more than its model ((x - y) / L with L = K lr < 1):
    with one norm over both, the round's median was the controls', and a site could move the model
    hundreds of times further than any honest site, with a quiet control, unnoticed."""
    plan, sent, intake = _intake()
    for site in "abcd":
        assert intake.receive(site, _reply(sent, site, model_step=0.01, control_step=1.0)) is None
    assert intake.receive("e", _reply(sent, "e", model_step=4.0, control_step=0.0)) is None  # checked at finish
    result, report = intake.finish()
    assert "e" in intake.rejected and "update norm" in intake.rejected["e"]
    assert np.abs(result["w"] - START["w"]).max() < 0.02  # the attacker's model did not get in


def test_a_huge_control_with_a_quiet_model_is_caught_by_the_control_guard():
    plan, sent, intake = _intake()
    for site in "abcd":
        assert intake.receive(site, _reply(sent, site, model_step=0.01, control_step=1.0)) is None
    assert intake.receive("e", _reply(sent, "e", model_step=0.0, control_step=100.0)) is None
    intake.finish()
    assert "e" in intake.rejected and "control" in intake.rejected["e"]
    assert np.abs(plan.c["w"]).max() < 1.0  # c came from the honest sites only


def test_small_rounds_guard_controls_with_the_recent_control_norms():
    plan, sent, intake = _intake(history=[0.03] * 4, control_history=[3.0] * 4)
    assert intake.receive("a", _reply(sent, "a", model_step=0.01, control_step=1.0)) is None
    assert intake.receive("e", _reply(sent, "e", model_step=0.0, control_step=100.0)) is None
    _, report = intake.finish()
    assert set(intake.rejected) == {"e"} and "control_norm_bound" in report
    records = round_records(0, intake, {}, report, [])
    assert [r["control_norm"] > 0 for r in records if r["site"] == "a"] == [True]


def test_hospitals_builder_never_overwrites_a_file_in_a_non_empty_out(tmp_path):
    """A careless ``python -m fedseg.data.hospitals2d SOURCE .`` in a repository replaced its README.md."""
    from test_hospitals2d import _source

    from fedseg.data.hospitals2d import build, main
    from fedseg.errors import UserError

    source = _source(tmp_path / "src", n=9)
    out = tmp_path / "project"
    out.mkdir()
    (out / "README.md").write_text("my project\n")
    with pytest.raises(UserError, match="not empty"):
        build(source, out)
    assert (out / "README.md").read_text() == "my project\n"
    assert main([str(source), str(out / "README.md")]) == 2  # a file as OUT: a message, not a traceback


def test_hospitals_builder_output_folder_check_comes_before_reading_the_source(tmp_path):
    from fedseg.data.hospitals2d import build
    from fedseg.errors import UserError

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    with pytest.raises(UserError, match="not empty"):
        build(Path(tmp_path / "no-such-source"), tmp_path / "out")


def test_clip_shrinks_an_outlying_model_to_the_models_bound():
    plan = Scaffold(seed=0, weighted_by="uniform", sites=len(SITES))
    sent = plan.outgoing(0, START)
    intake = RoundIntake(plan.aggregation(0, sent), sent, DECLARED, GuardConfig(norm_action="clip"))
    for site in "abcd":
        intake.receive(site, _reply(sent, site, model_step=0.01, control_step=1.0))
    intake.receive("e", _reply(sent, "e", model_step=4.0, control_step=0.0))
    result, report = intake.finish()
    assert set(report["clipped"]) == {"e"} and not intake.rejected
    assert np.abs(result["w"] - START["w"]).max() < 0.02  # e's model moved at most 5 x the median


def test_shrinking_keeps_a_zero_dimensional_parameter_an_array():
    """A clipped update must still pass the coordinator's checks: a 0-d float parameter stays an array."""
    from fedseg.plans.robust import shrink

    moved = shrink({"scale": np.array(3.0, np.float32)}, {"scale": np.array(1.0, np.float32)}, 0.5)
    assert isinstance(moved["scale"], np.ndarray) and moved["scale"].dtype == np.float32 and moved["scale"] == 2.0
