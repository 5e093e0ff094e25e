"""Sample-level DP (DP-SGD) at a site: per-case clipping and noise, the budget and its ledger, the
secret noise, the networks Opacus can train, and per-case losses for membership inference."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import list_data_collate
from opacus.optimizers import DPOptimizer

from fedseg.errors import UserError
from fedseg.models.registry import ModelConfig, build_network
from fedseg.privacy.accounting import epsilon_spent
from fedseg.privacy.config import PrivacyConfig
from fedseg.privacy.membership import attack_auc
from fedseg.privacy import ledger
from fedseg.training import private
from fedseg.training.private import BudgetExhausted, private_step
from fedseg.training.trainer import SiteTrainer, TrainingConfig
from fedseg.training.weights import get_weights
from fedseg.types import RoundConfig

MODEL = ModelConfig("UNet", (4, 8), num_res_units=0)


@pytest.fixture
def site(png_site, task_2d, build_dataset):
    """4 training and 2 test cases of 16 x 16 pixels; ``site(**preprocessing)``."""
    return lambda **preprocessing: build_dataset(png_site.root, task_2d, (0.67, 0.0, 0.33), **preprocessing)


def dp_trainer(data, state_dir=None, epsilon=4.0, trainings=2, model=MODEL, **training):
    training = {"lr": 1e-2, "batch_size": 2, "local_steps": 2, "validate_local": False, **training}
    trainer = SiteTrainer(data, model, TrainingConfig(**training), state_dir=state_dir,
                          privacy=PrivacyConfig(dp="sample", epsilon=epsilon, max_grad_norm=1.0), dp_trainings=trainings)
    assert trainer.private is not None  # set up now (it is otherwise at the first training): Opacus's hooks
    return trainer


def same(a, b):
    return all(np.array_equal(a[k], b[k]) for k in a)


def test_each_case_is_one_clipped_unit_however_many_patches_it_gives(site):
    """Exact: the step is -(sum over cases of clip(patch 1 + patch 2 gradient)) / expected batch."""
    trainer = dp_trainer(site(patch_size=(8, 8), patches_per_case=2, foreground_ratio=1.0))
    batch = list_data_collate([trainer.data.train_loader(1, 0).dataset[i] for i in (0, 1)])
    assert batch["image"].shape[0] == 4  # 2 cases x 2 patches, case by case

    plain = build_network(MODEL, 2, 1, 2)
    plain.load_state_dict(trainer.network.state_dict())
    patch_grads = []
    for i in range(4):
        plain.zero_grad()
        trainer.loss(plain(batch["image"][i:i + 1]), batch["label"][i:i + 1]).backward()  # plain tensors
        patch_grads.append(torch.cat([p.grad.ravel() for p in plain.parameters()]))
    cases = [patch_grads[0] + patch_grads[1], patch_grads[2] + patch_grads[3]]
    clip = float(sum(g.norm() for g in cases) / 2)  # between the two cases' norms: one is clipped
    assert min(g.norm() for g in cases) < clip < max(g.norm() for g in cases)
    expected = -sum(g * min(1.0, clip / (float(g.norm()) + 1e-6)) for g in cases) / 3

    before = torch.cat([p.detach().ravel() for p in trainer.network.parameters()])
    sgd = torch.optim.SGD(trainer.network.parameters(), lr=1.0)
    step = DPOptimizer(sgd, noise_multiplier=0.0, max_grad_norm=clip, expected_batch_size=3)
    private_step(trainer.network, step, trainer._batch_loss, batch, cases=2)
    moved = torch.cat([p.detach().ravel() for p in trainer.network.parameters()]) - before
    torch.testing.assert_close(moved, expected, atol=1e-6, rtol=1e-4)

    # a case with a huge gradient moves the model no further than its clipping norm allows
    huge = DPOptimizer(torch.optim.SGD(trainer.network.parameters(), lr=1.0), noise_multiplier=0.0,
                       max_grad_norm=0.1, expected_batch_size=1)
    before = torch.cat([p.detach().ravel() for p in trainer.network.parameters()])
    private_step(trainer.network, huge, lambda b: trainer._batch_loss(b) * 1e6, batch, cases=2)
    moved = torch.cat([p.detach().ravel() for p in trainer.network.parameters()]) - before
    assert 0.05 < float(moved.norm()) <= 2 * 0.1 + 1e-5


def test_noise_has_standard_deviation_sigma_times_the_clipping_norm(site):
    trainer = dp_trainer(site(), model=ModelConfig("UNet", (16, 32), num_res_units=0))
    before = torch.cat([p.detach().ravel() for p in trainer.network.parameters()])
    step = DPOptimizer(torch.optim.SGD(trainer.network.parameters(), lr=1.0), noise_multiplier=2.0,
                       max_grad_norm=0.5, expected_batch_size=4, generator=torch.Generator().manual_seed(0))
    private_step(trainer.network, step, trainer._batch_loss, None, cases=0)  # no case drawn: noise only
    noise = (torch.cat([p.detach().ravel() for p in trainer.network.parameters()]) - before) * -4
    assert noise.numel() > 5000
    assert float(noise.std()) == pytest.approx(2.0 * 0.5, rel=0.05)
    assert abs(float(noise.mean())) < 0.1


def test_rounds_spend_the_budget_and_the_site_refuses_to_train_past_it(site, tmp_path):
    trainer = dp_trainer(site(), tmp_path / "state")
    dp = trainer.private
    assert (dp.sample_rate, dp.budget) == (0.5, 4) and dp.noise_multiplier > 0
    weights = get_weights(trainer.network)
    first = trainer.train(weights, RoundConfig(round=0, seed=1))
    assert first.metrics["epsilon"] == epsilon_spent(dp.noise_multiplier, 0.5, 2, 1e-5)
    assert "train_loss" not in first.metrics and first.metrics["steps"] == 2
    second = trainer.train(first.weights, RoundConfig(round=1, seed=2))
    assert second.metrics["epsilon"] == epsilon_spent(dp.noise_multiplier, 0.5, 4, 1e-5)
    assert 0.99 * 4.0 <= second.metrics["epsilon"] <= 4.0  # the whole budget, as planned
    with pytest.raises(BudgetExhausted, match="needs 2 DP-SGD steps but 0 of the 4 steps"):
        trainer.train(second.weights, RoundConfig(round=2, seed=3))
    with pytest.raises(BudgetExhausted):  # one more step, asked by a round config, is refused too
        trainer.train(second.weights, RoundConfig(round=2, seed=3, local_steps=1))
    saved = json.loads((tmp_path / "state" / ledger.LEDGER).read_text())
    assert sorted(saved["releases"].values()) == [2, 2] and saved["noise_multiplier"] == dp.noise_multiplier


def test_fine_tuning_is_inside_the_budget_and_a_hostile_round_config_is_refused(site):
    data = site()
    trainer = SiteTrainer(data, MODEL, TrainingConfig(batch_size=2, local_steps=1, validate_local=False),
                          privacy=PrivacyConfig(dp="sample", epsilon=2.0), dp_trainings=1, dp_fine_tune_epochs=1)
    assert trainer.private.budget == 1 + 2  # one round of 1 step, one epoch of ceil(4 / 2) steps
    start = get_weights(trainer.network)
    for config in (RoundConfig(round=0, seed=1, local_steps=-5), RoundConfig(round=0, seed=1, local_epochs=1.5)):
        with pytest.raises(ValueError, match="site png_site: the round's local_(steps|epochs) must be a whole number"):
            trainer.train(start, config)
    federated = trainer.train(start, RoundConfig(round=0, seed=1))
    tuned = trainer.fine_tune(federated.weights, epochs=1, seed=3)
    assert tuned.metrics["steps"] == 2 and 0.99 * 2.0 <= tuned.metrics["epsilon"] <= 2.0
    with pytest.raises(BudgetExhausted):
        trainer.fine_tune(start, epochs=1, seed=3)


def test_a_restarted_site_continues_its_ledger_and_retraces_a_round_bit_for_bit(site, tmp_path):
    data, state = site(), tmp_path / "state"
    trainer = dp_trainer(data, state)
    start = get_weights(trainer.network)
    first = trainer.train(start, RoundConfig(round=0, seed=1))
    second = trainer.train(first.weights, RoundConfig(round=1, seed=2))

    restarted = dp_trainer(data, state)  # a crash after round 1 trained, before its update arrived
    again = restarted.train(first.weights, RoundConfig(round=1, seed=2))
    assert same(again.weights, second.weights) and again.metrics == {**second.metrics, "seconds": again.metrics["seconds"]}
    assert restarted.private.ledger.steps == 4  # answered again, counted once
    with pytest.raises(BudgetExhausted):
        restarted.train(second.weights, RoundConfig(round=2, seed=3))
    # the same round asked again from other weights is a new release: counted, here refused
    with pytest.raises(BudgetExhausted):
        restarted.train(start, RoundConfig(round=1, seed=2))


def test_the_noise_comes_from_the_site_secret_not_the_round_seed(site, tmp_path):
    data = site()
    one, other = dp_trainer(data), dp_trainer(data)  # no state_dir: a fresh secret in memory each
    start = get_weights(one.network)
    a = one.train(start, RoundConfig(round=0, seed=1)).weights
    b = other.train(start, RoundConfig(round=0, seed=1)).weights
    assert not same(a, b)
    kept = dp_trainer(data, tmp_path / "s")
    assert (tmp_path / "s" / ledger.SECRET).stat().st_mode & 0o077 == 0  # readable by the site only
    c = kept.train(start, RoundConfig(round=0, seed=1)).weights
    assert same(c, dp_trainer(data, tmp_path / "s").train(start, RoundConfig(round=0, seed=1)).weights)
    with pytest.raises(UserError, match="dp_ledger.json was written for other privacy settings .*budget_steps"):
        dp_trainer(data, tmp_path / "s", trainings=3)


def test_delta_must_be_below_one_over_the_training_cases(site):
    with pytest.raises(UserError, match=r"site png_site: privacy.delta = 0.3 must be below 1 / \(its 4 training "
                                        r"cases\) = 0.25.*set privacy.delta to at most 0.1"):
        trainer = SiteTrainer(site(), MODEL, TrainingConfig(), privacy=PrivacyConfig(dp="sample", epsilon=1.0,
                                                                                      delta=0.3))
        assert trainer.case_counts()["train"] == 4  # it can still join: the coordinator then says what to set
        trainer.train(trainer.weights(), RoundConfig(round=0, seed=1))


def test_cases_are_poisson_sampled_and_an_epoch_is_one_over_q_steps(site, monkeypatch):
    drawn = []
    real = private.private_step
    monkeypatch.setattr(private, "private_step", lambda *a, **k: drawn.append(a[4]) or real(*a, **k))
    trainer = dp_trainer(site(), epsilon=50.0, local_steps=None, local_epochs=30, trainings=1)
    update = trainer.train(get_weights(trainer.network), RoundConfig(round=0, seed=1))
    assert update.metrics["steps"] == 60 == len(drawn)  # q = 2 / 4: 2 steps an epoch
    assert len(set(drawn)) >= 3 and 1.5 <= np.mean(drawn) <= 2.5 and max(drawn) <= 4


@pytest.mark.parametrize("model, message", [
    (ModelConfig("SegResNet", (4, 8)), 'cannot train SegResNet.*set \\[model\\] name = "UNet" or "BasicUNet"'),
    (ModelConfig("UNet", (4, 8), num_res_units=0, norm="batch"), 'BatchNorm2d.*set \\[model\\] norm = "instance"')])
def test_networks_opacus_cannot_train_are_refused_with_what_to_use_instead(site, model, message):
    with pytest.raises(UserError, match=message):
        dp_trainer(site(), model=model)


@pytest.mark.parametrize("model", [ModelConfig("UNet", (4, 8, 16), num_res_units=2),
                                   ModelConfig("BasicUNet", (4, 4, 8, 8, 16, 4))])
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_opacus_per_case_gradients_of_fedseg_networks_equal_per_case_backward_passes(model, dims):
    from opacus.grad_sample import GradSampleModule

    torch.manual_seed(0)
    network = build_network(model, dims, 1, 3)  # training mode: Opacus records only then
    loss = torch.nn.CrossEntropyLoss()
    x, y = torch.randn(3, 1, *[32] * dims), torch.randint(0, 3, (3, *[32] * dims))
    expected = []
    for i in range(3):
        network.zero_grad()
        loss(network(x[i:i + 1]), y[i:i + 1]).backward()
        expected.append([p.grad.clone() for p in network.parameters()])
    GradSampleModule(network, strict=True)
    network.zero_grad()
    loss(network(x), y).backward()
    for j, p in enumerate(network.parameters()):
        for i in range(3):
            torch.testing.assert_close(p.grad_sample[i], expected[i][j], atol=1e-5, rtol=1e-3)


def test_case_losses_are_deterministic_whole_case_losses(site):
    trainer = dp_trainer(site())
    weights = get_weights(trainer.network)
    losses = trainer.case_losses(weights, "train")
    assert len(losses) == 4 and losses == trainer.case_losses(weights, "train")
    case = trainer.data.cases["train"][2]
    with torch.no_grad():
        trainer.network.eval()
        by_hand = trainer.loss(trainer.network(case["image"][None]), case["label"][None])
    assert losses[2] == pytest.approx(float(by_hand))
    test = trainer.case_losses(weights, "test")
    assert len(test) == 2 and 0.0 <= attack_auc(losses, test) <= 1.0


def test_case_losses_of_a_patch_model_use_sliding_windows_over_the_whole_case(site):
    trainer = SiteTrainer(site(patch_size=(8, 8), patches_per_case=2), MODEL, TrainingConfig())
    weights = get_weights(trainer.network)
    losses = trainer.case_losses(weights, "test")
    case = trainer.data.cases["test"][0]
    from monai.inferers import sliding_window_inference

    with torch.no_grad():
        trainer.network.eval()
        logits = sliding_window_inference(case["image"][None], (8, 8), 4, trainer.network, overlap=0.25,
                                          mode="gaussian")
        assert losses[0] == pytest.approx(float(trainer.loss(logits, case["label"][None])))
        whole = float(trainer.loss(trainer.network(case["image"][None]), case["label"][None]))
    assert losses[0] != whole  # windows, not one pass over the case


def test_a_damaged_ledger_or_secret_stops_the_site_with_what_to_do(site, tmp_path):
    data, state = site(), tmp_path / "state"
    trainer = dp_trainer(data, state)
    trainer.train(get_weights(trainer.network), RoundConfig(round=0, seed=1))
    saved = json.loads((state / ledger.LEDGER).read_text())
    for damaged in ("{not json", json.dumps({**saved, "releases": {"round 0 x": -2}}), "[]"):
        (state / ledger.LEDGER).write_text(damaged)
        with pytest.raises(UserError, match="privacy ledger is damaged.*restore it"):
            dp_trainer(data, state)
    (state / ledger.LEDGER).write_text(json.dumps(saved))
    (state / ledger.SECRET).write_text("guessable")
    with pytest.raises(UserError, match="DP secret is damaged"):
        dp_trainer(data, state)


def test_dp_step_benchmark_quick_runs():
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(root / "benchmarks" / "dp_step.py"), "--quick", "--batch", "2"],
                            cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    row = next(line.split() for line in result.stdout.splitlines() if line.split()[:1] == ["2"])
    assert row[-2:] == ["yes", "yes"], result.stdout  # a restarted site retraces its private round
