"""``fedseg predict``: the label map of a new image is the one evaluation computes on the
preprocessed case, carried back onto the input's own grid; models found in run directories,
k-fold ensembles averaged; every input a model cannot take is a clear error."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.processing import resample_from_to
from PIL import Image
from rich.console import Console

import fedseg.cli
from fedseg.data.dataset import SiteDataset
from fedseg.data.preprocessing import deterministic_transforms
from fedseg.data.readers import read_volume
from fedseg.data.site_spec import SiteSpec
from fedseg.data.splits import SplitFractions
from fedseg.errors import UserError
from fedseg.experiment import Experiment, parse_experiment
from fedseg.predict import collect_inputs, resolve_model
from fedseg.runtime.run_directory import RunDirectory
from fedseg.study import initial_weights
from fedseg.training.trainer import SiteTrainer

SHAPE = (7, 9, 6)
LPS = np.diag([-2.0, -2.0, 3.0, 1.0])  # needs reorientation to RAS and resampling to 1 mm
LPS[:3, 3] = [30.0, 12.0, -4.0]
LABELS = {"background": 0, "lesion": 5}  # the output holds these values, not class indices


def write_site(root: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(3)
    for kind in ("images", "labels"):
        (root / kind).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = rng.normal(0, 1, SHAPE).astype(np.float32)
        image[2:5, 3:7, 1:4] += 3
        label = np.where(image > 1.5, 5, 0).astype(np.uint8)
        nib.save(nib.Nifti1Image(image, LPS), str(root / "images" / f"case_{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label, LPS), str(root / "labels" / f"case_{i}.nii.gz"))
    return root


def make_run(root: Path, site: Path, folds: int = 1, **overrides) -> tuple[Path, Experiment, list]:
    """A run directory as simulation leaves it: experiment.toml, results.json and checkpoints
    (FL_global, or FL_global_fold<i> for k folds), with untrained networks of different seeds."""
    data = {"name": "predict", "seed": 4, "task": {"labels": LABELS, "spatial_dims": 3},
            "sites": [{"name": "a", "path": str(site)}], "splits": {"train": 0.4, "val": 0.3, "test": 0.3},
            "preprocessing": {"orientation": "RAS", "spacing": [1.0, 1.0, 1.0], "intensity": "zscore"},
            "model": {"name": "UNet", "channels": [4, 8], "num_res_units": 0},
            "training": {"device": "cpu"}, "federation": {"folds": folds}}
    data.update(overrides)  # whole sections
    experiment = parse_experiment(data)
    run = RunDirectory(root)
    run.create()
    (root / "experiment.toml").write_text(experiment.to_toml())
    run.write_json("results.json", {"model": "FL_global"})
    members = []
    for fold in range(folds):
        torch.manual_seed(100 + fold)
        weights = initial_weights(parse_experiment({**data, "seed": 100 + fold}))
        run.save_model("FL_global" if folds == 1 else f"FL_global_fold{fold}", weights)
        members.append(weights)
    return root, experiment, members


@pytest.fixture(scope="module")
def run3d(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    site = write_site(root / "site")
    return (site, *make_run(root / "run", site))


def predict(*argv: str) -> tuple[int, str]:
    buffer = io.StringIO()
    console, fedseg.cli.console = fedseg.cli.console, Console(file=buffer, width=300, color_system=None)
    try:
        return fedseg.cli.main(["predict", *argv]), buffer.getvalue()
    finally:
        fedseg.cli.console = console


def trainer_prediction_on_input_grid(experiment: Experiment, weights, site: Path, case: str) -> np.ndarray:
    """What evaluation predicts for ``case`` (SiteTrainer.predict_case, on the preprocessed case),
    resampled by nibabel (nearest) from the preprocessed grid MONAI reports onto the file's grid."""
    data = SiteDataset(SiteSpec("a", site), experiment.task, experiment.preprocessing, SplitFractions(0.4, 0.3, 0.3),
                       experiment.seed, experiment.model.downsampling_factor)
    split = next(s for s, cases in data.cases.items() if any(c["case"] == case for c in cases))
    trainer = SiteTrainer(data, experiment.model, experiment.training)
    _, _, indices = trainer.predict_case(weights, case, split)
    volume = read_volume(site / "images" / f"{case}.nii.gz", 3)
    prepare = deterministic_transforms(experiment.preprocessing, 3, experiment.model.downsampling_factor)
    from monai.data.meta_tensor import MetaTensor

    affine = torch.as_tensor(volume.affine)
    prepared = prepare({"image": MetaTensor(torch.from_numpy(volume.array.astype(np.float32)), affine=affine),
                        "label": MetaTensor(torch.zeros((1, *SHAPE)), affine=affine)})
    assert prepared["image"].shape[1:] == indices.shape  # the grid evaluation predicted on
    grid = nib.Nifti1Image(indices.astype(np.float32), prepared["image"].affine.numpy())
    back = resample_from_to(grid, (SHAPE, volume.affine), order=0).get_fdata()
    return np.asarray(experiment.task.class_values)[back.astype(int)]


def test_the_prediction_is_evaluations_on_the_inputs_own_grid(run3d, tmp_path):
    site, run, experiment, [weights] = run3d
    source = site / "images" / "case_1.nii.gz"
    code, output = predict(str(run), str(source), "--out", str(tmp_path / "out"))
    assert code == 0, output
    written = nib.load(str(tmp_path / "out" / "case_1.nii.gz"))
    assert written.shape == SHAPE and np.array_equal(written.affine, LPS)
    assert int(written.header["sform_code"]) == int(nib.load(str(source)).header["sform_code"])
    expected = trainer_prediction_on_input_grid(experiment, weights, site, "case_1")
    assert set(np.unique(expected)) == {0, 5}  # both classes present: the comparison means something
    assert np.array_equal(np.asarray(written.dataobj), expected)


def test_a_k_fold_run_predicts_with_the_ensemble_of_its_folds(tmp_path):
    site = write_site(tmp_path / "site", n=4)
    run, experiment, members = make_run(tmp_path / "run", site, folds=2, preprocessing={  # and sliding windows
        "orientation": "RAS", "spacing": [1.0, 1.0, 1.0], "intensity": "zscore", "patch_size": [8, 8, 8]})
    model = resolve_model(run)
    assert model.name == "FL_global" and len(model.members) == 2
    code, output = predict(str(run), str(site / "images"), "--out", str(tmp_path / "out"))
    assert code == 0 and "ensemble of 2" in output and "4 label map(s) written" in output
    written = np.asarray(nib.load(str(tmp_path / "out" / "case_2.nii.gz")).dataobj)
    assert np.array_equal(written, trainer_prediction_on_input_grid(experiment, members, site, "case_2"))


def test_a_model_file_with_its_experiment_predicts_as_its_run(run3d, tmp_path):
    site, run, _, _ = run3d
    model = tmp_path / "exported.pt"
    shutil.copy(run / "checkpoints" / "FL_global.pt", model)
    source = str(site / "images" / "case_0.nii.gz")
    assert predict(str(model), source, "--experiment", str(run / "experiment.toml"), "--out",
                   str(tmp_path / "file"))[0] == 0
    assert predict(str(run), source, "--out", str(tmp_path / "run"))[0] == 0
    assert np.array_equal(nib.load(str(tmp_path / "file" / "case_0.nii.gz")).get_fdata(),
                          nib.load(str(tmp_path / "run" / "case_0.nii.gz")).get_fdata())
    code, output = predict(str(model), source, "--out", str(tmp_path / "x"))
    assert code == 1 and "--experiment EXPERIMENT.toml" in output


def test_pngs_come_back_at_their_own_size_with_the_tasks_values(tmp_path):
    site = tmp_path / "site"
    for kind in ("images", "labels"):
        (site / kind).mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(site / "images" / "x.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(site / "labels" / "x.png")
    run, _, _ = make_run(tmp_path / "run", site, task={"labels": {"background": 0, "polyp": 1}, "spatial_dims": 2},
                         preprocessing={"orientation": "", "spatial_size": [16, 16], "resize_mode": "resize",
                                        "intensity": "percentile_rescale"})
    inputs = tmp_path / "new"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 13), dtype=np.uint8)).save(inputs / "grey.png")
    Image.fromarray(rng.integers(0, 255, (9, 30, 3), dtype=np.uint8)).save(inputs / "colour.jpg")
    code, output = predict(str(run), str(inputs), "--out", str(tmp_path / "out"))
    assert code == 0, output
    for name, size in (("grey", (13, 20)), ("colour", (30, 9))):
        with Image.open(tmp_path / "out" / f"{name}.png") as written:
            assert written.size == size and set(np.unique(np.asarray(written))) <= {0, 1}


@pytest.mark.parametrize("write, expected", [
    (lambda p: nib.save(nib.Nifti1Image(np.zeros((*SHAPE, 2), np.float32), LPS), str(p)),
     "has 2 channel(s) but the model takes 1"),
    (lambda p: nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2, 2), np.float32), LPS), str(p)),
     "spatial dimensions"),
    (lambda p: p.write_bytes(b"\x1f\x8b not a nifti"), "unreadable or corrupt"),
])
def test_an_input_the_model_cannot_take_is_an_error_naming_it(run3d, tmp_path, write, expected):
    site, run, _, _ = run3d
    bad = tmp_path / "bad.nii.gz"
    write(bad)
    code, output = predict(str(run), str(bad), str(site / "images" / "case_0.nii.gz"), "--out", str(tmp_path / "o"))
    assert code == 1 and "Traceback" not in output
    [error] = [line for line in output.splitlines() if line.startswith("error")]
    assert str(bad) in error and expected in error
    assert "1 label map(s) written" in output and (tmp_path / "o" / "case_0.nii.gz").exists()


def test_wrong_models_and_outputs_are_errors_before_anything_is_written(run3d, tmp_path):
    site, run, _, _ = run3d
    source = str(site / "images" / "case_0.nii.gz")
    code, output = predict(str(run), source, "--model", "FL_local_b", "--out", str(tmp_path / "o"))
    assert code == 1 and "no model 'FL_local_b'; its models: FL_global" in output
    (tmp_path / "file").write_text("")
    code, output = predict(str(run), source, "--out", str(tmp_path / "file"))
    assert code == 1 and "is a file" in output
    assert predict(str(run), source, "--out", str(tmp_path / "o"))[0] == 0
    before = (tmp_path / "o" / "case_0.nii.gz").stat().st_mtime_ns
    code, output = predict(str(run), source, "--out", str(tmp_path / "o"))
    assert code == 1 and "--overwrite" in output
    assert (tmp_path / "o" / "case_0.nii.gz").stat().st_mtime_ns == before
    assert predict(str(run), source, "--out", str(tmp_path / "o"), "--overwrite")[0] == 0


def test_nnunet_channel_files_are_one_input_and_names_must_not_collide(tmp_path):
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    for case in ("p1", "p2"):
        for c in range(2):
            nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), LPS), str(folder / f"{case}_{c:04d}.nii.gz"))
    inputs = collect_inputs([folder], in_channels=2)
    assert [(i.name, [f.name for f in i.files]) for i in inputs] == [
        ("p1", ["p1_0000.nii.gz", "p1_0001.nii.gz"]), ("p2", ["p2_0000.nii.gz", "p2_0001.nii.gz"])]
    (folder / "p2_0001.nii.gz").unlink()
    with pytest.raises(UserError, match="p2_0001.nii.gz"):
        collect_inputs([folder], in_channels=2)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(folder / "p1_0000.nii.gz", other / "p1_0000.nii.gz")
    assert [i.name for i in collect_inputs([other], in_channels=1)] == ["p1"]  # imagesTs of a 1-channel task
    with pytest.raises(UserError, match="would both be written as p1"):
        collect_inputs([other, other / "p1_0000.nii.gz"], in_channels=1)
