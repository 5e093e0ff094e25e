"""Learning-rate schedules (``[training] lr_schedule``): the curves, the options' checks, the run
length from the coordinator (checked), the lr of every local step (plain, kept optimizer, DP-SGD,
fine-tuning), constant = the training before schedules, resume, and the comparison arms."""

import json
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedseg.arms import ArmRunner
from fedseg.errors import UserError
from fedseg.experiment import ConfigError, parse_experiment
from fedseg.models.registry import ModelConfig
from fedseg.plans.cyclic import CyclicWeightTransfer
from fedseg.plans.fedavg import FedAvg
from fedseg.privacy.config import PrivacyConfig
from fedseg.runtime.run_directory import RunDirectory
from fedseg.study import initial_weights, load_sites, prepare_run_dir
from fedseg.training import private
from fedseg.training.config import TrainingConfig
from fedseg.training.schedules import MAX_RUN_ROUNDS, RoundLR, lr_at, run_rounds
from fedseg.training.trainer import SiteTrainer
from fedseg.types import RoundConfig
from tiny_experiment import tiny_experiment

LR = 1e-2
MODEL = ModelConfig("UNet", (4, 8), num_res_units=0)


def config(**options) -> TrainingConfig:
    return TrainingConfig(lr=LR, **options)


# --- the curves against hand-computed values ------------------------------------------------------
def test_constant_is_the_lr_everywhere_and_warmup_rises_linearly_from_zero():
    assert [lr_at(config(), p) for p in (0, 0.3, 0.999, 1)] == [LR] * 4
    warm = config(warmup=0.2)
    assert [lr_at(warm, p) for p in (0, 0.05, 0.1, 0.2, 0.7)] == pytest.approx([0, 0.0025, 0.005, LR, LR])


def test_cosine_with_warmup_reaches_lr_then_halfway_then_lr_min():
    cosine = config(lr_schedule="cosine", warmup=0.1, lr_min=1e-4)
    assert lr_at(cosine, 0.0) == 0.0  # the warm-up's start
    assert lr_at(cosine, 0.05) == pytest.approx(5e-3)
    assert lr_at(cosine, 0.1) == pytest.approx(1e-2)  # the warm-up's end: the full lr
    assert lr_at(cosine, 0.55) == pytest.approx(5.05e-3)  # the cosine's midpoint: (lr + lr_min) / 2
    assert lr_at(cosine, 0.1 + 0.9 / 4) == pytest.approx(1e-4 + 9.9e-3 * (1 + math.sqrt(0.5)) / 2)
    assert lr_at(cosine, 1.0) == pytest.approx(1e-4)
    assert lr_at(config(lr_schedule="cosine"), 0.5) == pytest.approx(5e-3)


def test_poly_is_nnunets_rule():
    poly = config(lr_schedule="poly")
    assert lr_at(poly, 0.0) == LR
    assert lr_at(poly, 0.5) == pytest.approx(1e-2 * 0.5 ** 0.9)  # 5.359e-3
    assert lr_at(poly, 0.99) == pytest.approx(1e-2 * 0.01 ** 0.9)  # 1.585e-4, near the end
    assert lr_at(poly, 1.0) == 0.0
    assert lr_at(config(lr_schedule="poly", poly_exponent=2.0), 0.5) == pytest.approx(2.5e-3)
    assert lr_at(config(lr_schedule="poly", lr_min=1e-3), 1.0) == pytest.approx(1e-3)


def test_step_drops_at_each_milestone_after_the_warmup():
    step = config(lr_schedule="step", step_milestones=(0.5, 0.75), step_gamma=0.1)
    assert [lr_at(step, p) for p in (0, 0.4999, 0.5, 0.7499, 0.75, 1)] == pytest.approx(
        [1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4])
    warm = config(lr_schedule="step", step_milestones=(0.5,), warmup=0.2)  # milestones: shares of the whole run
    assert [lr_at(warm, p) for p in (0.1, 0.2, 0.4999, 0.5)] == pytest.approx([5e-3, 1e-2, 1e-2, 1e-3])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["constant", "step", "cosine", "poly"]), st.floats(0, 0.9), st.floats(0, 1),
       st.lists(st.floats(0.01, 0.99), min_size=1, max_size=4, unique=True), st.floats(0.01, 1),
       st.floats(0.1, 5), st.lists(st.floats(0, 1), min_size=2, max_size=6))
def test_every_schedule_stays_in_range_rises_in_the_warmup_and_then_never_rises(
        shape, warmup, lr_min_share, milestones, gamma, exponent, progress):
    options = {"step": {"step_milestones": tuple(sorted(warmup + m * (1 - warmup) for m in milestones)),
                        "step_gamma": gamma},
               "poly": {"poly_exponent": exponent}}.get(shape, {})
    training = config(lr_schedule=shape, warmup=warmup, lr_min=0 if shape == "constant" else LR * lr_min_share,
                      **options)
    progress = sorted(progress)
    lrs = [lr_at(training, p) for p in progress]
    assert all(0 <= lr <= LR * (1 + 1e-12) for lr in lrs)
    for p, q, a, b in zip(progress, progress[1:], lrs, lrs[1:]):
        if q < warmup:
            assert b >= a
        elif p >= warmup:
            assert b <= a * (1 + 1e-12)


# --- the options -----------------------------------------------------------------------------------
@pytest.mark.parametrize("options, match", [
    ({"lr_schedule": "linear"}, "training.lr_schedule must be one of .*'linear'"),
    ({"warmup": 1.0}, r"training.warmup must be .*\[0, 1\).*got 1.0"),
    ({"warmup": -0.1}, r"training.warmup .*got -0.1"),
    ({"lr_schedule": "cosine", "lr_min": 0.5}, r"training.lr_min must be .*\[0, 0.01\].*got 0.5"),
    ({"lr_schedule": "cosine", "lr_min": -1e-3}, "training.lr_min .*got -0.001"),
    ({"lr_schedule": "step", "step_milestones": (0.5,), "step_gamma": 0.0}, "training.step_gamma .*got 0.0"),
    ({"lr_schedule": "step", "step_milestones": (0.5,), "step_gamma": 1.5}, "training.step_gamma .*got 1.5"),
    ({"lr_schedule": "poly", "poly_exponent": 0.0}, "training.poly_exponent .*got 0.0"),
    ({"lr_schedule": "poly", "poly_exponent": math.inf}, "training.poly_exponent .*got inf"),
    ({"lr_schedule": "step", "step_milestones": (0.5, 0.5)}, r"step_milestones must increase, got \[0.5, 0.5\]"),
    ({"lr_schedule": "step", "step_milestones": (0.5, 1.0)}, r"training.step_milestones\[1\] .*got 1.0"),
    ({"lr_schedule": "step", "step_milestones": (0.0,)}, r"training.step_milestones\[0\] .*got 0.0"),
    ({"lr_schedule": "step", "step_milestones": (0.5,) * 101}, "at most 100"),
    ({"lr_schedule": "step"}, "'step' needs step_milestones"),
    ({"lr_schedule": "step", "step_milestones": (0.2, 0.5), "warmup": 0.2}, r"step_milestones\[0\] = 0.2 falls in"),
    ({"lr_schedule": "cosine", "step_milestones": (0.5,)}, "step_milestones = .*applies to lr_schedule = 'step'"),
    ({"lr_schedule": "cosine", "poly_exponent": 2.0}, "poly_exponent = 2.0 applies to lr_schedule = 'poly'"),
    ({"lr_min": 1e-3}, "lr_min = 0.001 applies to a decaying lr_schedule"),
])
def test_each_option_is_checked_and_named(options, match):
    with pytest.raises(ValueError, match=match):
        config(**options)


def test_the_experiment_file_names_the_table_and_key(tmp_path):
    with pytest.raises(ConfigError, match=r"\[training\] training.warmup must be .*got 1.5"):
        parse_experiment(tiny_experiment(tmp_path, training={"lr_schedule": "cosine", "warmup": 1.5}))
    with pytest.raises(ConfigError, match=r"\[training\] step_milestones = 'half' has the wrong type"):
        parse_experiment(tiny_experiment(tmp_path, training={"step_milestones": "half"}))
    experiment = parse_experiment(tiny_experiment(tmp_path, training={
        "lr_schedule": "step", "step_milestones": [0.5, 0.8], "step_gamma": 0.2, "warmup": 0.1}))
    assert experiment.training.step_milestones == (0.5, 0.8)
    assert parse_experiment(experiment.to_dict()).to_dict() == experiment.to_dict()  # saved and read back


# --- the run's length: sent by every plan, checked by the site -------------------------------------
def test_every_plan_sends_its_total_rounds():
    assert {c.extra["run_rounds"] for c in FedAvg(seed=0, rounds=7).configure_train(3, ["a", "b"]).values()} == {7}
    cyclic = CyclicWeightTransfer(seed=0, sites=["a", "b", "c"], cycles=2)
    assert [c.extra["run_rounds"] for r in range(6) for c in cyclic.configure_train(r, ["a", "b", "c"]).values()] \
        == [6] * 6


@pytest.mark.parametrize("value", [None, "3", 3.0, True, 0, 2, -1, MAX_RUN_ROUNDS + 1, [3]])
def test_a_missing_or_hostile_run_length_is_refused_naming_the_site_and_value(value):
    extra = {} if value is None else {"run_rounds": value}
    shown = "" if value is None else ".*" + re.escape(repr(value))
    with pytest.raises(UserError, match=r"site h1: .*run_rounds" + shown):
        RoundLR(config(lr_schedule="cosine"), RoundConfig(round=2, seed=0, extra=extra), 4, "h1")


def test_constant_needs_no_run_length_but_checks_one_that_comes():
    assert run_rounds(config(), RoundConfig(round=5, seed=0), "h1") is None
    with pytest.raises(UserError, match=r"from 6 \(round 5 is part of the run\).*got 5"):
        run_rounds(config(), RoundConfig(round=5, seed=0, extra={"run_rounds": 5}), "h1")
    with pytest.raises(UserError, match="warmup = 0.1 needs"):  # a warm-up varies the lr too
        run_rounds(config(warmup=0.1), RoundConfig(round=0, seed=0), "h1")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=5),
                 st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)),
       st.one_of(st.integers(-5, 20), st.integers(), st.booleans()))
def test_any_run_length_is_used_only_if_it_is_a_whole_number_beyond_the_round(value, round):
    try:
        got = run_rounds(config(lr_schedule="poly"), RoundConfig(round=round, seed=0, extra={"run_rounds": value}), "h")
    except UserError:
        return
    assert type(got) is int and type(round) is int and 0 <= round < got <= MAX_RUN_ROUNDS


def test_the_lr_of_each_step_of_a_round():
    lr = RoundLR(config(lr_schedule="cosine"), RoundConfig(round=1, seed=0, extra={"run_rounds": 2}), 4, "h")
    assert [lr.at(s) for s in range(4)] == pytest.approx(
        [LR * (1 + math.cos(math.pi * p)) / 2 for p in (0.5, 0.625, 0.75, 0.875)])
    assert lr.metrics() == {}  # no step taken yet


# --- the site trainer -----------------------------------------------------------------------------
@pytest.fixture
def site(png_site, task_2d, build_dataset):
    """4 training cases (2 steps an epoch at batch 2) and 2 test cases of 16 x 16 pixels."""
    return build_dataset(png_site.root, task_2d, (0.67, 0.0, 0.33))


def used_lrs(monkeypatch):
    """The lr of every optimizer step the site trainer takes, as the optimizer holds it at the step."""
    used, step = [], SiteTrainer._step
    monkeypatch.setattr(SiteTrainer, "_step", lambda self, batch, optimizer, *rest: (
        used.append(optimizer.param_groups[0]["lr"]), step(self, batch, optimizer, *rest))[1])
    return used


def rounds(trainer, n, run_rounds=None):
    start, updates = trainer.weights(), []
    for r in range(n):
        extra = {} if run_rounds is None else {"run_rounds": run_rounds}
        updates.append(trainer.train(start if r == 0 else updates[-1].weights, RoundConfig(r, 10 + r, extra=extra)))
    return updates


@pytest.mark.parametrize("state", ["reset", "keep"])
def test_constant_trains_exactly_as_without_schedules(site, monkeypatch, tmp_path, state):
    training = config(batch_size=2, local_steps=3, optimizer_state=state, validate_local=False)
    torch.manual_seed(0)
    scheduled = rounds(SiteTrainer(site, MODEL, training, tmp_path / "a"), 2, run_rounds=2)
    torch.manual_seed(0)
    unscheduled = rounds(SiteTrainer(site, MODEL, training, tmp_path / "b"), 2)  # no run length sent
    torch.manual_seed(0)  # a decaying schedule trains otherwise: the bypass below is seen
    poly = rounds(SiteTrainer(site, MODEL, config(batch_size=2, local_steps=3, lr_schedule="poly",
                                                  optimizer_state=state, validate_local=False), tmp_path / "d"),
                  2, run_rounds=2)
    monkeypatch.setattr(RoundLR, "set", lambda self, optimizer, step: None)  # the schedule's code bypassed
    torch.manual_seed(0)
    bypassed = rounds(SiteTrainer(site, MODEL, training, tmp_path / "c"), 2, run_rounds=2)
    for a, b, c in zip(scheduled, unscheduled, bypassed):
        assert all(np.array_equal(a.weights[k], c.weights[k]) and np.array_equal(b.weights[k], c.weights[k])
                   for k in a.weights)
    assert scheduled[-1].metrics["lr_last"] == LR
    assert any(not np.array_equal(poly[-1].weights[k], bypassed[-1].weights[k]) for k in poly[-1].weights)


def test_a_kept_optimizer_restored_after_a_restart_takes_the_lr_from_the_schedule(site, monkeypatch, tmp_path):
    training = config(batch_size=2, local_steps=2, optimizer_state="keep", lr_schedule="cosine", warmup=0.25,
                      validate_local=False)
    used = used_lrs(monkeypatch)
    first = SiteTrainer(site, MODEL, training, tmp_path / "state")
    update = first.train(first.weights(), RoundConfig(0, 1, extra={"run_rounds": 2}))
    restarted = SiteTrainer(site, MODEL, training, tmp_path / "state")  # restores round 0's Adam, lr included
    restarted.train(update.weights, RoundConfig(1, 2, extra={"run_rounds": 2}))
    expected = [lr_at(training, p) for p in (0, 0.25, 0.5, 0.75)]
    assert used == pytest.approx(expected) and expected == pytest.approx([0, 1e-2, 7.5e-3, 2.5e-3])


def test_fine_tuning_runs_the_schedule_over_its_own_epochs_from_the_base_lr(site, monkeypatch):
    training = config(batch_size=2, lr_schedule="poly", validate_local=False)
    used = used_lrs(monkeypatch)
    trainer = SiteTrainer(site, MODEL, training)
    tuned = trainer.fine_tune(trainer.weights(), epochs=2, seed=3)  # 2 epochs of 2 steps
    assert used == pytest.approx([LR * (1 - p) ** 0.9 for p in (0, 0.25, 0.5, 0.75)])
    assert tuned.metrics["lr_last"] == used[-1]


def test_dp_sgd_steps_through_the_schedule_and_another_run_length_is_another_release(site, monkeypatch, tmp_path):
    training = config(batch_size=2, local_steps=2, lr_schedule="cosine", validate_local=False)
    trainer = SiteTrainer(site, MODEL, training, tmp_path / "state", dp_trainings=4,
                          privacy=PrivacyConfig(dp="sample", epsilon=8.0, max_grad_norm=1.0))
    used, step = [], private.private_step
    monkeypatch.setattr(private, "private_step", lambda network, optimizer, *rest: (
        used.append(optimizer.original_optimizer.param_groups[0]["lr"]), step(network, optimizer, *rest))[1])
    start = trainer.weights()
    update = trainer.train(start, RoundConfig(1, 5, extra={"run_rounds": 2}))
    assert used == pytest.approx([LR / 2, LR * (1 + math.cos(0.75 * math.pi)) / 2])  # progress 0.5, 0.75
    assert update.metrics["lr_last"] == used[-1] and trainer.private.ledger.steps == 2
    again = trainer.train(start, RoundConfig(1, 5, extra={"run_rounds": 2}))  # the same request: counted once
    assert trainer.private.ledger.steps == 2
    assert all(np.array_equal(update.weights[k], again.weights[k]) for k in start)
    trainer.train(start, RoundConfig(1, 5, extra={"run_rounds": 3}))  # other lrs: a new release, new noise
    assert trainer.private.ledger.steps == 4


# --- whole runs: resume and the comparison arms ------------------------------------------------------
def train_arms(experiment, out, resume=False, arms=("federated",)):
    """The experiment's arms trained as ``fedseg simulate`` trains them (without scoring and report)."""
    run_dir = RunDirectory(out)
    prepare_run_dir(run_dir, experiment, resume)
    runner = ArmRunner(experiment, load_sites(experiment), run_dir, initial_weights(experiment), resume)
    models = runner.federated(experiment.compute_plan) if "federated" in arms else {}
    return {**models, **(runner.standalone() if "standalone" in arms else {}),
            **(runner.centralized() if "centralized" in arms else {})}


QUICK = {"federation": {"validate_global": False}}


def test_a_cosine_run_stopped_after_round_one_resumes_bit_for_bit(tmp_path, monkeypatch):
    experiment = parse_experiment(tiny_experiment(tmp_path, rounds=2, training={
        "lr_schedule": "cosine", "warmup": 0.25, "validate_local": False}, **QUICK))
    straight = train_arms(experiment, tmp_path / "straight")["FL_global"]
    original = SiteTrainer.train

    def stop_in_round_two(self, weights, round_config):
        if round_config.round == 1:
            raise RuntimeError("stopped")
        return original(self, weights, round_config)

    monkeypatch.setattr(SiteTrainer, "train", stop_in_round_two)
    with pytest.raises(RuntimeError, match="stopped"):
        train_arms(experiment, tmp_path / "stopped")
    monkeypatch.setattr(SiteTrainer, "train", original)
    resumed = train_arms(experiment, tmp_path / "stopped", resume=True)["FL_global"]
    assert all(np.array_equal(straight[k], resumed[k]) for k in straight)
    records = [json.loads(x) for x in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr_last"] for r in records] == pytest.approx(
        [lr_at(experiment.training, p) for p in (2 / 6, 2 / 6, 2 / 6, 5 / 6, 5 / 6, 5 / 6)])  # 3 steps a round


def test_the_comparison_arms_step_through_the_same_lrs_as_the_federation(tmp_path, monkeypatch):
    arms = ["federated", "standalone", "centralized"]
    experiment = parse_experiment(tiny_experiment(tmp_path, rounds=2, arms=arms, training={
        "lr_schedule": "poly", "warmup": 0.2, "validate_local": False}, **QUICK))
    used, arm, step, train = [], [None], SiteTrainer._step, ArmRunner._train
    monkeypatch.setattr(SiteTrainer, "_step", lambda self, batch, optimizer, *rest: (
        used.append((arm[0], self.name, optimizer.param_groups[0]["lr"])), step(self, batch, optimizer, *rest))[1])
    monkeypatch.setattr(ArmRunner, "_train", lambda self, name, *rest, **options: (
        arm.__setitem__(0, name), train(self, name, *rest, **options))[1])
    train_arms(experiment, tmp_path / "run", arms=arms)
    expected = [lr_at(experiment.training, (r + s / 3) / 2) for r in range(2) for s in range(3)]
    assert expected[0] == 0.0 and expected[1] > 0  # the warm-up, then poly (3 local steps a round)
    by_arm: dict[tuple, list[float]] = {}
    for arm_name, site, lr in used:
        by_arm.setdefault((arm_name.removesuffix(f"_{site}"), site), []).append(lr)
    assert sorted(by_arm) == sorted([("FL_global", s) for s in ("hospital_a", "hospital_b", "hospital_c")]
                                    + [("standalone", s) for s in ("hospital_a", "hospital_b", "hospital_c")]
                                    + [("centralized", "centralized")])
    assert all(lrs == expected for lrs in by_arm.values())
    for records in [tmp_path / "run" / "metrics.jsonl", *(tmp_path / "run" / "arms").glob("*/metrics.jsonl")]:
        lines = [json.loads(x) for x in records.read_text().splitlines()]
        assert {(r["round"], r["lr_last"]) for r in lines} == {(0, expected[2]), (1, expected[5])}
