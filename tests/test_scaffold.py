"""SCAFFOLD (Karimireddy et al. 2020, option II): the coordinator's plan against a numpy reference
written here, the site's control variate against the paper's formula and across a restart, both
trust boundaries (hostile sites, a hostile coordinator), the refusals, and whole runs with resume."""

import json
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedseg.errors import UserError
from fedseg.experiment import parse_experiment
from fedseg.plans.checks import UpdateRejected
from fedseg.plans.registry import build_plan
from fedseg.plans.scaffold import Scaffold, split_controls
from fedseg.privacy.config import PrivacyConfig
from fedseg.runtime.intake import GuardConfig, RoundIntake
from fedseg.runtime.run_directory import RunDirectory
from fedseg.runtime.simulation import simulation_engine
from fedseg.runtime.site_app import SiteApp
from fedseg.training.scaffold import SiteControls
from fedseg.types import CONTROL_PREFIX, RoundConfig, Update
from tiny_experiment import tiny_experiment

SITES = ["a", "b", "c", "d", "e"]
CASES = {"a": 3, "b": 5, "c": 1, "d": 7, "e": 2}
START = {"w": np.array([[0.5, -1.0, 2.0], [0.0, 3.0, -0.25]]), "b": np.array(0.75),
         "count": np.array(10, dtype=np.int64)}
C = CONTROL_PREFIX


# --- the coordinator: numpy sites and a numpy reference ---------------------------------------------
def reply(round, site, sent):
    """A site's SCAFFOLD reply to ``sent``: its model y_i and c + dc_i, both seeded; and (y_i, dc_i)."""
    model, c = split_controls(sent)
    rng = np.random.default_rng([round, ord(site)])
    y = {k: np.asarray(model[k] + rng.normal(size=np.shape(model[k]))) for k in ("w", "b")}
    dc = {k: np.asarray(rng.normal(size=np.shape(c[k]))) for k in c}
    weights = {**y, "count": np.asarray(model["count"] + CASES[site]), **{C + k: np.asarray(c[k] + dc[k]) for k in c}}
    return Update(weights, CASES[site]), y, dc


class NumpySite:
    """A site trainer that answers like a SCAFFOLD site (the site app hands it the control)."""

    def __init__(self, name):
        self.name, self.controls = name, []

    def train(self, weights, config, control=None):
        self.controls.append((config.round, control))
        update, _, _ = reply(config.round, self.name, {**weights, **{C + k: v for k, v in (control or {}).items()}})
        return update

    def evaluate(self, weights, split="test"):
        return []

    def case_counts(self):
        return {"train": CASES[self.name], "val": 0, "test": 0}

    def weights(self):
        return dict(START)


def run_plan(plan, rounds, weights=START, start=0):
    for round in range(start, rounds):
        sent = plan.outgoing(round, weights)
        chosen = sorted(plan.configure_train(round, SITES))
        weights = plan.aggregate_train(round, sent, {s: reply(round, s, sent)[0] for s in chosen})
    return weights


def reference(rounds, server_lr, weighted, chosen):
    """Algorithm 1: x += eta_g * (mean y_i - x); c += |S|/N * mean dc_i; the counter's mean rounded.
    Returns the final model and the c each round was sent."""
    x, c, count, sent_cs = {k: START[k].copy() for k in ("w", "b")}, {"w": 0.0, "b": 0.0}, START["count"], []
    for round in range(rounds):
        sent_cs.append(dict(c))
        sent = {**x, "count": count, **{C + k: np.asarray(np.broadcast_to(c[k], np.shape(x[k]))) for k in c}}
        replies = {s: reply(round, s, sent) for s in chosen[round]}
        share = {s: CASES[s] if weighted else 1 for s in replies}
        total = sum(share.values())
        mean_y = {k: sum(share[s] * replies[s][1][k] for s in replies) / total for k in x}
        mean_dc = {k: sum(share[s] * replies[s][2][k] for s in replies) / total for k in x}
        count = np.rint(sum(share[s] * (count + CASES[s]) for s in replies) / total).astype(np.int64)
        x = {k: x[k] + server_lr * (mean_y[k] - x[k]) for k in x}
        c = {k: c[k] + len(replies) / len(SITES) * mean_dc[k] for k in c}
    return {**x, "count": count}, sent_cs


@pytest.mark.parametrize("weighted_by", ["uniform", "n_samples"])
def test_three_rounds_with_partial_participation_match_the_numpy_reference(weighted_by):
    plan = Scaffold(seed=4, server_lr=0.6, fraction=0.6, weighted_by=weighted_by, sites=len(SITES), rounds=3)
    chosen = [sorted(plan.configure_train(r, SITES)) for r in range(3)]
    assert all(len(c) == 3 for c in chosen) and len({tuple(c) for c in chosen}) > 1  # |S| = 3 < N = 5
    sent_cs = []
    original = plan.outgoing
    plan.outgoing = lambda round, weights: sent_cs.append(split_controls(original(round, weights))[1]) or \
        original(round, weights)
    got = run_plan(plan, 3)
    expected, expected_cs = reference(3, 0.6, weighted_by == "n_samples", chosen)
    assert got.keys() == START.keys()  # the aggregation's result is the model only
    for key in ("w", "b"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-12, atol=1e-12)
        for sent, c in zip(sent_cs, expected_cs):
            np.testing.assert_allclose(sent[key], c[key], rtol=1e-12, atol=1e-12)
    assert got["count"] == expected["count"] and set(sent_cs[0]) == {"w", "b"}  # no control for an integer
    assert not np.allclose(sent_cs[2]["w"], 0)


def test_a_restart_from_the_checkpointed_state_continues_bit_for_bit(tmp_path):
    def plan():
        return Scaffold(seed=6, server_lr=1.5, fraction=0.6, sites=len(SITES), rounds=3)

    straight, first = run_plan(plan(), 3), plan()
    run_dir = RunDirectory(tmp_path)
    run_dir.create()
    run_dir.save_round(0, run_plan(first, 1), first.state_dict())
    _, weights, state = run_dir.last_round()
    resumed = plan()
    resumed.load_state_dict(state)
    assert resumed.c.keys() == {"w", "b"} and all(resumed.c[k].tobytes() == first.c[k].tobytes() for k in "wb")
    continued = run_plan(resumed, 3, weights, start=1)
    assert all(continued[k].tobytes() == straight[k].tobytes() for k in START)


def test_the_engine_sends_controls_and_sites_get_them_in_process(tmp_path):
    sites = {name: NumpySite(name) for name in SITES}
    plan = Scaffold(seed=4, server_lr=0.6, fraction=0.6, weighted_by="uniform", sites=len(SITES), rounds=3)
    chosen = [sorted(plan.configure_train(r, SITES)) for r in range(3)]
    engine = simulation_engine(plan, {n: SiteApp(n, s) for n, s in sites.items()}, RunDirectory(tmp_path),
                               validate_global=False, guard=GuardConfig(norm_action="off"))
    final = engine.run(START, 3)
    expected, expected_cs = reference(3, 0.6, False, chosen)
    np.testing.assert_allclose(final["w"], expected["w"], rtol=1e-12)
    received = [(round, control) for site in sites.values() for round, control in site.controls]
    assert sorted(round for round, _ in received) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for round, control in received:  # the c of the round, split off by the site app, without the prefix
        assert control.keys() == {"w", "b"}
        np.testing.assert_allclose(control["w"], expected_cs[round]["w"], rtol=1e-12, atol=1e-15)
    audit = [json.loads(line) for line in (tmp_path / "received.jsonl").read_text().splitlines()]
    trained = [line for line in audit if line["task"] == "train"]
    assert len(trained) == 9 and all(line["verdict"] == "accepted" for line in trained)
    assert set(trained[0]["params"]) == {"w", "b", "count", C + "w", C + "b"}


# --- hostile sites and a hostile coordinator ----------------------------------------------------------
def _bad(update, key, value=None):
    weights = dict(update.weights)
    if value is None:
        del weights[key]
    else:
        weights[key] = value
    return Update(weights, update.n_samples)


@pytest.mark.parametrize("change, reason", [
    (lambda u: _bad(u, C + "w", np.zeros((3, 2))), f"parameter '{C}w' has shape (3, 2), expected (2, 3)"),
    (lambda u: _bad(u, C + "w", np.full((2, 3), np.nan)), f"parameter '{C}w' has 6 NaN or infinite value"),
    (lambda u: _bad(u, C + "b"), f"missing '{C}b'"),
    (lambda u: _bad(u, C + "extra", np.zeros(2)), f"unexpected '{C}extra'"),
    (lambda u: _bad(u, C + "count", np.array(1, dtype=np.int64)), f"unexpected '{C}count'"),
    (lambda u: _bad(u, C + "w", np.zeros((2, 3), dtype=np.float32)), "has dtype float32, expected float64"),
])
def test_the_coordinator_rejects_a_sites_bad_controls_with_the_reason(change, reason):
    plan = Scaffold(seed=0, sites=len(SITES))
    sent = plan.outgoing(0, START)
    intake = RoundIntake(plan.aggregation(0, sent), sent, {s: {"train": 9, "val": 0, "test": 0} for s in SITES},
                         GuardConfig(norm_action="off"))
    assert intake.receive("a", change(reply(0, "a", sent)[0])) is not None
    assert reason in intake.rejected["a"]
    assert intake.receive("b", reply(0, "b", sent)[0]) is None
    result, _ = intake.finish()
    assert result.keys() == START.keys() and np.allclose(plan.c["w"], 0.2 * reply(0, "b", sent)[2]["w"])


@pytest.mark.parametrize("control, reason", [
    ({"w": np.zeros((3, 2)), "b": np.array(0.0)}, "parameter 'w' has shape (3, 2), expected (2, 3)"),
    ({"w": np.full((2, 3), np.inf), "b": np.array(0.0)}, "parameter 'w' has 6 NaN or infinite value"),
    ({"w": np.zeros((2, 3))}, "missing 'b'"),
    ({"w": np.zeros((2, 3)), "b": np.array(0.0), "count": np.array(0)}, "unexpected 'count'"),
])
def test_a_site_refuses_a_bad_control_from_the_coordinator(control, reason):
    site = NumpySite("a")
    received = {**START, **{C + k: v for k, v in control.items()}}
    with pytest.raises(UpdateRejected, match="the coordinator's SCAFFOLD control variate") as refused:
        SiteApp("a", site).handle("train", received, RoundConfig(round=0, seed=1))
    assert reason in str(refused.value) and site.controls == []
    assert SiteApp("a", site).handle("train", {**START, C + "w": np.zeros((2, 3)), C + "b": np.array(0.0)},
                                     RoundConfig(round=0, seed=1)).n_samples == 3  # a good one trains
    with pytest.raises(UpdateRejected, match="unexpected"):  # controls only come with a training task
        SiteApp("a", site).handle("validate", received)


HOSTILE = st.one_of(
    st.builds(np.full, st.sampled_from([(2, 3), (3, 2), (), (6,)]), st.sampled_from([0.0, -1.5, np.nan, np.inf])),
    st.sampled_from([np.zeros((2, 3), np.float32), np.array(1, np.int64), np.array(0.5), "0.5", None, [0.0]]))
CONTROLS = st.dictionaries(st.sampled_from(["w", "b", "count", "zz", ""]), HOSTILE, max_size=4)


def valid(control):
    return set(control) == {"w", "b"} and all(
        isinstance(v, np.ndarray) and (v.shape, v.dtype) == (START[k].shape, START[k].dtype) and np.isfinite(v).all()
        for k, v in control.items())


@settings(max_examples=150, deadline=None)
@given(CONTROLS)
def test_a_site_trains_on_a_coordinators_control_only_when_it_fits(control):
    site = NumpySite("a")
    try:
        SiteApp("a", site).handle("train", {**START, **{C + k: v for k, v in control.items()}},
                                  RoundConfig(round=0, seed=1))
    except UpdateRejected:
        assert control and not valid(control) and site.controls == []
    else:
        assert site.controls == [(0, control or None)] and (not control or valid(control))


@settings(max_examples=150, deadline=None)
@given(CONTROLS)
def test_the_coordinator_takes_a_sites_controls_only_when_they_fit_and_a_rejected_one_leaves_c_as_it_was(control):
    plan = Scaffold(seed=0, weighted_by="uniform", sites=len(SITES))
    sent = plan.outgoing(0, START)
    intake = RoundIntake(plan.aggregation(0, sent), sent, {s: {"train": 9, "val": 0, "test": 0} for s in SITES},
                         GuardConfig(norm_action="off"))
    model, _ = split_controls(reply(0, "a", sent)[0].weights)
    accepted = intake.receive("a", Update({**model, **{C + k: v for k, v in control.items()}}, 3)) is None
    assert accepted == valid(control)
    intake.receive("b", reply(0, "b", sent)[0])
    intake.finish()
    from_b = 0.2 * reply(0, "b", sent)[2]["w"]
    assert np.allclose(plan.c["w"], (from_b + 0.2 * control["w"]) if accepted else from_b)


# --- refusals ---------------------------------------------------------------------------------------
def test_scaffold_is_refused_with_robust_aggregators_and_privacy_mechanisms(tmp_path):
    for aggregator in ("median", "trimmed_mean", "clipped_mean"):
        with pytest.raises(ValueError, match=f"plan 'scaffold' needs aggregator = 'mean'.*'{aggregator}'.*fedavg"):
            build_plan("scaffold", 0, SITES, 1, None, {"aggregator": aggregator}, rounds=1)
    plan = build_plan("scaffold", 0, SITES, 1, None, {"server_lr": 0.5}, rounds=2)
    assert isinstance(plan, Scaffold) and (plan.sites, plan.server_lr, plan.weighting.by) == (5, 0.5, "n_samples")
    for privacy in (dict(dp="sample", epsilon=8), dict(dp="client", epsilon=8, clip=1.0),
                    dict(secure_aggregation=True), dict(homomorphic=True)):
        with pytest.raises(ValueError, match="plan 'scaffold' cannot run with .*; use plan fedavg, fedprox or fedavgm"):
            PrivacyConfig(**privacy).check_with("scaffold", {}, "off", "instance", 5)
    with pytest.raises(UserError, match="plan 'scaffold' cannot run with secure aggregation"):
        parse_experiment(tiny_experiment(tmp_path, plan={"name": "scaffold"},
                                         privacy={"secure_aggregation": True}, guard={"norm_action": "off"}))


def test_the_flare_wire_carries_the_prefixed_keys_both_ways():
    from nvflare.apis.utils.decomposers import flare_decomposers
    from nvflare.app_common.decomposers import common_decomposers
    from nvflare.app_common.utils.fl_model_utils import FLModelUtils
    from nvflare.fuel.utils import fobs

    from fedseg.runtime.flare import wire

    flare_decomposers.register()
    common_decomposers.register()

    def over_the_wire(model):
        return FLModelUtils.from_shareable(fobs.loads(fobs.dumps(FLModelUtils.to_shareable(model))))

    sent = Scaffold(seed=0, sites=len(SITES)).outgoing(0, START)
    received = over_the_wire(wire.weights_model(sent, meta=wire.payloads_to_wire("train", {})))
    assert received.params.keys() == sent.keys() and split_controls(dict(received.params))[1].keys() == {"w", "b"}
    update = reply(0, "a", sent)[0]
    back = wire.reply_from_wire("train", over_the_wire(wire.reply_to_wire("train", update)))
    assert back.weights.keys() == update.weights.keys()
    assert all(back.weights[k].tobytes() == update.weights[k].tobytes() for k in update.weights)


# --- the site: its control variate c_i --------------------------------------------------------------
def test_the_correction_after_each_step_is_sgds_corrected_gradient_and_c_i_the_mean_gradient():
    """With SGD and a changing lr, correcting after each step equals the paper's grad += c - c_i, and
    option II's c_i+ (from c_i = 0) is the lr-weighted mean gradient; the reply is c + c_i+."""
    torch.manual_seed(0)
    network, inputs, targets, lrs = torch.nn.Linear(3, 2), torch.randn(5, 3), torch.randn(5, 2), [0.1, 0.05, 0.2]
    start = {k: v.detach().clone() for k, v in network.state_dict().items()}
    c = {k: np.random.default_rng(1).normal(size=tuple(v.shape)).astype(np.float32) for k, v in start.items()}
    optimizer = torch.optim.SGD(network.parameters(), lr=1.0)

    def train():
        for lr in lrs:
            optimizer.param_groups[0]["lr"] = lr
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(network(inputs), targets).backward()
            optimizer.step()
        return Update({k: v.detach().numpy().copy() for k, v in network.state_dict().items()}, 5)

    controls = SiteControls("s", network, None)
    update = controls.corrected(c, 0, optimizer, train)
    by_hand = {k: v.clone().requires_grad_() for k, v in start.items()}
    mean_gradient = {k: torch.zeros_like(v) for k, v in start.items()}
    for lr in lrs:
        loss = torch.nn.functional.mse_loss(inputs @ by_hand["weight"].T + by_hand["bias"], targets)
        grads = dict(zip(by_hand, torch.autograd.grad(loss, list(by_hand.values()))))
        with torch.no_grad():
            for k, p in by_hand.items():
                mean_gradient[k] += lr * grads[k] / sum(lrs)
                p -= lr * (grads[k] + torch.from_numpy(c[k]))
    for k in start:
        np.testing.assert_allclose(update.weights[k], by_hand[k].detach().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(controls.before(1)[k], mean_gradient[k].numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(update.weights[C + k], c[k] + mean_gradient[k].numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match="privacy.dp"):
        SiteControls("s", network, None, private=True).corrected(c, 1, optimizer, train)


def site_trainer(data, state_dir=None):
    from fedseg.models.registry import ModelConfig
    from fedseg.training.config import TrainingConfig
    from fedseg.training.trainer import SiteTrainer

    return SiteTrainer(data, ModelConfig("UNet", (4, 8), num_res_units=0, norm="batch"),
                       TrainingConfig(lr=0.01, batch_size=2, local_steps=3, validate_local=False), state_dir=state_dir)


def test_a_site_keeps_c_i_by_the_formula_and_a_restarted_site_continues_bit_for_bit(png_site, task_2d,
                                                                                     build_dataset, tmp_path):
    data = build_dataset(png_site.root, task_2d)
    trainer = site_trainer(data, tmp_path / "state")
    x = trainer.weights()
    floats = {k: v for k, v in x.items() if v.dtype.kind == "f"}
    rng = np.random.default_rng(2)
    c = {k: (0.1 * rng.normal(size=v.shape)).astype(v.dtype) for k, v in floats.items()}
    first = RoundConfig(round=0, seed=3, extra={"run_rounds": 3})
    update = trainer.train(x, first, control=c)
    assert update.weights.keys() == x.keys() | {C + k for k in floats}
    params, c_i = dict(trainer.network.named_parameters()), trainer.controls.before(1)
    buffers = set(floats) - set(params)
    assert c_i.keys() == params.keys() and buffers  # batch norm's running statistics have no c_i
    for k in params:  # c_i+ = c_i - c + (x - y_i) / (K lr), c_i = 0
        moved = x[k].astype(np.float64) - update.weights[k].astype(np.float64)
        np.testing.assert_allclose(c_i[k], -c[k].astype(np.float64) + moved / (update.metrics["steps"] * 0.01),
                                   rtol=1e-12, atol=1e-12)
        assert update.weights[C + k].tobytes() == (c[k] + c_i[k]).astype(np.float32).tobytes()
    assert all(update.weights[C + k].tobytes() == c[k].tobytes() for k in buffers)
    plain = site_trainer(data).train(x, first)
    zero = site_trainer(data).train(x, first, control={k: np.zeros_like(v) for k, v in floats.items()})
    assert all(plain.weights[k].tobytes() == zero.weights[k].tobytes() for k in x)  # c = c_i = 0: no change
    assert not np.allclose(plain.weights["model.0.conv.weight"], update.weights["model.0.conv.weight"])

    model, _ = split_controls(update.weights)
    second = RoundConfig(round=1, seed=4, extra={"run_rounds": 3})
    c1 = {k: (v * 0.5).astype(v.dtype) for k, v in c.items()}
    kept = trainer.train(model, second, control=c1)
    shutil.copytree(tmp_path / "state", tmp_path / "copy")  # then the coordinator stops before its checkpoint
    restarted = site_trainer(data, tmp_path / "copy").train(model, second, control=c1)  # round 2 asked again
    assert all(kept.weights[k].tobytes() == restarted.weights[k].tobytes() for k in kept.weights)
    trainer.train(model, RoundConfig(round=2, seed=5, extra={"run_rounds": 3}), control=c1)
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["scaffold_round_0001.pt",
                                                                      "scaffold_round_0002.pt"]
    (tmp_path / "copy" / "scaffold_round_0000.pt").write_bytes(b"damaged")
    with pytest.raises(UserError, match="saved SCAFFOLD control variate is damaged or does not fit"):
        site_trainer(data, tmp_path / "copy").train(model, second, control=c1)


# --- whole runs -------------------------------------------------------------------------------------
def test_a_scaffold_federation_resumed_after_round_one_equals_a_straight_run(tmp_path):
    from fedseg.study import initial_weights, load_sites, site_app

    experiment = parse_experiment(tiny_experiment(tmp_path, rounds=2, n_cases=6, plan={"name": "scaffold"},
                                                  training={"local_steps": 2, "validate_local": False}))
    datasets, start = load_sites(experiment), initial_weights(experiment)

    def engine(out):  # new site apps and trainers each time: a restart of every party
        run_dir = RunDirectory(out)
        run_dir.create()
        apps = {n: site_app(experiment, d, state_dir=out / "sites" / n) for n, d in datasets.items()}
        return simulation_engine(experiment.compute_plan(), apps, run_dir, validate_global=False)

    straight = engine(tmp_path / "straight").run(start, 2)
    engine(tmp_path / "resumed").run(start, 1)
    resumed = engine(tmp_path / "resumed").run(start, 2, resume=True)
    assert straight.keys() == start.keys()
    assert all(straight[k].tobytes() == resumed[k].tobytes() for k in start)
    records = RunDirectory(tmp_path / "resumed").read_metrics()
    assert [r["round"] for r in records] == [0, 0, 0, 1, 1, 1] and not any("rejected" in r for r in records)
    _, _, state = RunDirectory(tmp_path / "straight").last_round()
    assert state["c"].keys() == {k for k, v in start.items() if v.dtype.kind == "f"}
    assert len(list((tmp_path / "resumed" / "sites").rglob("scaffold_round_*.pt"))) == 6


def test_a_scaffold_simulation_runs_end_to_end_and_resumes_after_a_crash_in_round_two(tmp_path, monkeypatch):
    from fedseg.simulate import run_simulation
    from fedseg.training.trainer import SiteTrainer

    experiment = parse_experiment(tiny_experiment(tmp_path, rounds=2, plan={"name": "scaffold", "server_lr": 0.8}))
    straight = run_simulation(experiment, tmp_path / "straight")
    assert straight["overall"]["mean_dice"] > 0
    original = SiteTrainer.train

    def crash_in_round_two(self, weights, config, control=None):
        if config.round == 1 and self.name == "hospital_b":
            raise RuntimeError("power cut")
        return original(self, weights, config, control)

    monkeypatch.setattr(SiteTrainer, "train", crash_in_round_two)
    with pytest.raises(RuntimeError, match="power cut"):
        run_simulation(experiment, tmp_path / "crashed")
    monkeypatch.setattr(SiteTrainer, "train", original)
    run_simulation(experiment, tmp_path / "crashed", resume=True)
    for model in ("FL_global.pt", "global_round_001.pt"):
        a, b = (torch.load(tmp_path / run / "checkpoints" / model, weights_only=True) for run in ("straight", "crashed"))
        a, b = (x.get("model", x) for x in (a, b))
        assert all(torch.equal(a[k], b[k]) for k in a), model
