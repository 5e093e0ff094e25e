"""Losses, metrics, inference and the site trainer on 2D and 3D data."""

import nibabel as nib
import numpy as np
import pytest
import torch

from fedseg.data.dataset import SiteDataset, SiteSpec
from fedseg.data.preprocessing import Preprocessing
from fedseg.data.splits import SplitFractions
from fedseg.data.task import Task
from fedseg.models.registry import ModelConfig, build_network
from fedseg.training.losses import build_loss, logits_to_probabilities, output_channels, probabilities_to_labels
from fedseg.training.metrics import dice_per_class
from fedseg.training.trainer import SiteTrainer, TrainingConfig, build_site_network
from fedseg.training.weights import get_weights
from fedseg.types import RoundConfig


def test_dice_per_class_on_known_overlaps():
    truth = torch.zeros(1, 4, 4, dtype=torch.long)
    truth[0, :2, :2] = 1  # 4 voxels of class 1
    truth[0, 2:, 2:] = 2  # 4 voxels of class 2
    prediction = torch.zeros_like(truth)
    prediction[0, :2, :1] = 1  # 2 of class 1, all correct
    scores = dice_per_class(prediction, truth, n_classes=3)
    assert scores == pytest.approx([2 * 2 / (2 + 4), 0.0])


def test_dice_of_a_class_absent_from_truth_and_prediction_is_one():
    truth = torch.zeros(1, 4, 4, dtype=torch.long)
    assert dice_per_class(truth.clone(), truth, n_classes=2) == [1.0]
    prediction = truth.clone()
    prediction[0, 0, 0] = 1
    assert dice_per_class(prediction, truth, n_classes=2) == [0.0]


def test_bce_uses_one_sigmoid_channel_per_foreground_class():
    assert output_channels("bce", 3) == 2 and output_channels("dice_ce", 3) == 3
    logits = torch.full((1, 2, 2, 2), -5.0)
    logits[0, 1, 0, 0] = 5.0  # class 2 at (0, 0)
    logits[0, 0, 1, 1] = 1.0  # class 1 at (1, 1)
    assert probabilities_to_labels(logits_to_probabilities(logits, "bce"), "bce")[0].tolist() == [[[2, 0], [0, 1]]]
    label = torch.tensor([[[[2, 0], [0, 1]]]])
    perfect = build_loss("bce", 3)(logits * 10, label)
    wrong = build_loss("bce", 3)(-logits * 10, label)
    assert perfect < 0.01 < wrong


@pytest.mark.parametrize("name, channels", [("UNet", (4, 8, 16)), ("BasicUNet", (4, 4, 8, 8, 16, 4)),
                                            ("SegResNet", (4, 8))])
@pytest.mark.parametrize("dims", [2, 3])
def test_networks_by_name_in_2d_and_3d(name, channels, dims):
    network = build_network(ModelConfig(name, channels), dims, in_channels=2, out_channels=3)
    assert network(torch.zeros(1, 2, *[32] * dims)).shape == (1, 3, *[32] * dims)


def write_spheres(root, n_cases=6, size=(20, 24, 18)):
    """Small 3D NIfTI cases: a bright sphere labelled 1 inside a shell labelled 2."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in size], indexing="ij"), -1)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    for i in range(n_cases):
        centre = np.array(size) / 2 + rng.uniform(-2, 2, 3)
        distance = np.linalg.norm(grid - centre, axis=-1)
        label = np.where(distance < 4, 1, np.where(distance < 6, 2, 0)).astype(np.uint8)
        image = (200 * (label == 1) + 120 * (label == 2) + rng.normal(30, 10, size)).astype(np.float32)
        nib.save(nib.Nifti1Image(image, affine), root / "images" / f"case{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labels" / f"case{i}.nii.gz")


def test_3d_patch_training_and_sliding_window_evaluation(tmp_path):
    write_spheres(tmp_path / "site")
    task = Task({"background": 0, "core": 1, "shell": 2}, spatial_dims=3)
    preprocessing = Preprocessing(spacing=(2.0, 2.0, 2.0), intensity="clip_rescale", clip=(0, 250),
                                  patch_size=(16, 16, 16), patches_per_case=2, foreground_ratio=0.75,
                                  flip=True, rotate90=True)
    data = SiteDataset(SiteSpec("s", tmp_path / "site"), task, preprocessing,
                       SplitFractions(0.5, 0.0, 0.5), seed=0)
    image = data.cases["train"][0]["image"]
    assert image.shape[1:] == (16, 18, 18)  # 15x18x18 at 2 mm, padded up to the patch size
    assert float(image.min()) >= -1 and float(image.max()) <= 1

    config = TrainingConfig(loss="dice_ce", lr=1e-2, batch_size=2, local_steps=4)
    model = ModelConfig("UNet", (4, 8, 16), num_res_units=1)
    trainer = SiteTrainer(data, model, config)
    torch.manual_seed(0)
    start = get_weights(build_site_network(model, task, "dice_ce"))
    update = trainer.train(start, RoundConfig(round=0, seed=1))
    assert update.n_samples == 3 and update.metrics["steps"] == 4
    assert "val_dice" not in update.metrics  # no validation cases in this split
    assert any(not np.array_equal(start[k], update.weights[k]) for k in start)
    cases = trainer.evaluate(update.weights, "test")
    assert [c.case for c in cases] == sorted(c.case for c in cases) and len(cases) == 3
    assert set(cases[0].dice) == {"core", "shell"}
    assert all(0.0 <= v <= 1.0 for c in cases for v in c.dice.values())


def test_training_is_reproducible_from_the_round_seed(tmp_path):
    write_spheres(tmp_path / "site", n_cases=4)
    task = Task({"background": 0, "core": 1, "shell": 2}, spatial_dims=3)
    data = SiteDataset(SiteSpec("s", tmp_path / "site"), task,
                       Preprocessing(patch_size=(16, 16, 16), flip=True), SplitFractions(0.5, 0.0, 0.5), seed=0)
    model = ModelConfig("UNet", (4, 8), num_res_units=0)
    trainer = SiteTrainer(data, model, TrainingConfig(loss="bce", batch_size=2, local_epochs=2))
    start = get_weights(trainer.network)
    first = trainer.train(start, RoundConfig(round=0, seed=5))
    again = trainer.train(start, RoundConfig(round=0, seed=5))
    other = trainer.train(start, RoundConfig(round=0, seed=6))
    assert first.metrics["steps"] == 2  # 2 cases, batch 2, 2 epochs
    assert all(np.array_equal(first.weights[k], again.weights[k]) for k in start)
    assert any(not np.array_equal(first.weights[k], other.weights[k]) for k in start)


def test_local_validation_is_reported_unless_switched_off(tmp_path):
    write_spheres(tmp_path / "site", n_cases=6)
    task = Task({"background": 0, "core": 1, "shell": 2}, spatial_dims=3)
    data = SiteDataset(SiteSpec("s", tmp_path / "site"), task, Preprocessing(spatial_size=(16, 16, 16)),
                       SplitFractions(0.5, 0.2, 0.3), seed=0)
    assert len(data.cases["val"]) == 1
    model = ModelConfig("UNet", (4, 8), num_res_units=0)
    for validate, expected in ((True, {"val_dice"}), (False, set())):
        trainer = SiteTrainer(data, model, TrainingConfig(local_steps=1, validate_local=validate))
        update = trainer.train(get_weights(trainer.network), RoundConfig(round=0, seed=1))
        assert {"val_dice"} & update.metrics.keys() == expected
        assert 0.0 <= update.metrics.get("val_dice", 0.0) <= 1.0


def test_hd95_and_bounding_box_coverage_on_known_shapes():
    from fedseg.training.metrics import bbox_coverage_per_class, case_metrics, hd95_per_class

    truth = torch.zeros(1, 20, 20, dtype=torch.long)
    truth[0, 5:10, 5:10] = 1
    shifted = torch.zeros_like(truth)
    shifted[0, 5:10, 8:13] = 1  # the same square, 3 voxels to the side
    assert hd95_per_class(shifted, truth, 2, spacing=(1.0, 2.0)) == [pytest.approx(6.0)]  # 3 voxels x 2 mm
    assert hd95_per_class(truth, truth, 2, spacing=(1.0, 1.0)) == [0.0]
    assert hd95_per_class(torch.zeros_like(truth), truth, 2, spacing=(1.0, 1.0)) == [float("inf")]
    assert bbox_coverage_per_class(shifted, truth, 2) == [pytest.approx(10 / 25)]  # columns 8-9 of 5-9
    corner = torch.zeros_like(truth)
    corner[0, 4, 4] = corner[0, 12, 12] = 1  # two dots whose box encloses the whole truth
    assert bbox_coverage_per_class(corner, truth, 2) == [1.0]

    metrics = case_metrics("c", torch.zeros_like(truth), truth, ["background", "organ"], (1.0, 1.0))
    assert metrics.failed == ["organ"] and metrics.dice == {"organ": 0.0}
    assert metrics.bbox_coverage == {"organ": 0.0}
    assert case_metrics("c", shifted, truth, ["background", "organ"], (1.0, 1.0)).failed == []


def sphere_trainer(tmp_path, **config):
    if not (tmp_path / "site").exists():
        write_spheres(tmp_path / "site", n_cases=4)
    task = Task({"background": 0, "core": 1, "shell": 2}, spatial_dims=3)
    data = SiteDataset(SiteSpec("s", tmp_path / "site"), task, Preprocessing(spatial_size=(16, 16, 16)),
                       SplitFractions(0.5, 0.0, 0.5), seed=0)
    model = ModelConfig("UNet", (4, 8), num_res_units=0)
    state_dir = config.pop("state_dir", None)
    return SiteTrainer(data, model, TrainingConfig(lr=1e-2, batch_size=1, **config), state_dir=state_dir)


def distance(a, b):
    return sum(float(((a[k] - b[k]) ** 2).sum()) for k in a if a[k].dtype.kind == "f") ** 0.5


def test_fedprox_term_keeps_the_local_model_near_the_global_one(tmp_path):
    trainer = sphere_trainer(tmp_path, local_steps=6)
    start = get_weights(trainer.network)
    plain = trainer.train(start, RoundConfig(round=0, seed=1))
    proximal = trainer.train(start, RoundConfig(round=0, seed=1, extra={"proximal_mu": 50.0}))
    assert distance(proximal.weights, start) < 0.8 * distance(plain.weights, start)
    assert proximal.metrics["train_loss"] > 0


def test_kept_optimizer_state_survives_a_restart(tmp_path):
    state = tmp_path / "state"
    trainer = sphere_trainer(tmp_path, local_steps=2, optimizer_state="keep", state_dir=state)
    weights = get_weights(trainer.network)
    for round in range(3):
        weights = trainer.train(weights, RoundConfig(round=round, seed=round)).weights
    straight = trainer.train(weights, RoundConfig(round=3, seed=3)).weights
    assert sorted(p.name for p in state.iterdir()) == ["optimizer_round_0002.pt", "optimizer_round_0003.pt"]

    restarted = sphere_trainer(tmp_path, local_steps=2, optimizer_state="keep", state_dir=state)
    again = restarted.train(weights, RoundConfig(round=3, seed=3)).weights  # loads round 2's state
    assert all(np.array_equal(straight[k], again[k]) for k in straight)
    fresh = sphere_trainer(tmp_path, local_steps=2, optimizer_state="reset")
    reset = fresh.train(weights, RoundConfig(round=3, seed=3)).weights
    assert any(not np.array_equal(straight[k], reset[k]) for k in straight)


def test_a_damaged_kept_optimizer_state_is_explained_not_a_traceback(tmp_path):
    from fedseg.errors import UserError

    state = tmp_path / "state"
    state.mkdir()
    (state / "optimizer_round_0002.pt").write_bytes(b"\x80\x02 truncated")
    trainer = sphere_trainer(tmp_path, local_steps=2, optimizer_state="keep", state_dir=state)
    with pytest.raises(UserError, match="optimizer_round_0002.pt: this site's saved optimizer state is damaged"):
        trainer.train(get_weights(trainer.network), RoundConfig(round=3, seed=3))


def test_fine_tune_trains_the_given_epochs_with_a_fresh_optimizer(tmp_path):
    trainer = sphere_trainer(tmp_path, local_steps=1, optimizer_state="keep")
    start = get_weights(trainer.network)
    update = trainer.fine_tune(start, epochs=3, seed=0)
    assert update.metrics["steps"] == 6  # 2 training cases, batch 1, 3 epochs (local_steps ignored)
    assert any(not np.array_equal(start[k], update.weights[k]) for k in start)


def test_recontrast_inverts_a_sites_intensities_and_keeps_its_labels(tmp_path):
    from fedseg.data.acquisition import recontrast

    image = np.array([[0.0, 10.0], [20.0, 100.0]], dtype=np.float32)
    inverted = recontrast(image, "invert")
    assert inverted.dtype == np.float32 and inverted.argmax() == image.argmin()
    lo, hi = np.percentile(image, [0.5, 99.5])
    np.testing.assert_allclose(inverted, lo + hi - np.clip(image, lo, hi), rtol=1e-6)
    with pytest.raises(ValueError, match="recontrast must be one of"):
        recontrast(image, "t2")

    write_spheres(tmp_path / "site", n_cases=4)
    task = Task({"background": 0, "core": 1, "shell": 2}, spatial_dims=3)
    plain, flipped = (SiteDataset(SiteSpec("s", tmp_path / "site", recontrast=kind), task,
                                  Preprocessing(spatial_size=(16, 16, 16), intensity="none"),
                                  SplitFractions(0.5, 0.0, 0.5), seed=0) for kind in (None, "invert"))
    a, b = plain.cases["train"][0], flipped.cases["train"][0]
    assert torch.equal(a["label"], b["label"])
    core = a["label"][0] == 1
    assert a["image"][0][core].mean() > a["image"][0][~core].mean()  # bright core ...
    assert b["image"][0][core].mean() < b["image"][0][~core].mean()  # ... dark after inversion
