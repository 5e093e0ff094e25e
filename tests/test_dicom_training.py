"""The same experiment trains from DICOM (MR series + DICOM SEG) as from the NIfTI it was converted
from: same cases, same weights, same test Dice; and every DICOM file is read once per run, whatever
the number of epochs (cases are preprocessed once and kept).

The round trip through a real PACS (Orthanc): the DICOM cases are uploaded, pulled with ``fedseg pacs
pull``, trained on, a test case is predicted with ``fedseg predict --push`` and the SEG read back from
Orthanc equals the NIfTI run's prediction of the same image voxel for voxel."""

from __future__ import annotations

import builtins
import json
import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import pydicom
import torch
from rich.console import Console

import fedseg.cli

from fedseg.data.dicom.export import export_site
from fedseg.data.dicom.labels import read_label
from fedseg.data.dicom.case import read_folder_series
from fedseg.data.loading import load_case
from fedseg.data.site import discover_cases
from fedseg.data.task import Task
from fedseg.experiment import parse_experiment
from fedseg.simulate import run_simulation

HIPPOCAMPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "msd-hippocampus"
LABELS = {"background": 0, "anterior": 1, "posterior": 2}
N_CASES = 10

pytestmark = pytest.mark.real_data


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    if not (HIPPOCAMPUS / "images").is_dir():
        pytest.skip(f"MSD hippocampus not found at {HIPPOCAMPUS} (../shared/data/msd-hippocampus from the "
                    "repository root)")
    root = tmp_path_factory.mktemp("dicom_training")
    # the cases stored as integers (55 of 260; the others are float32, which 16-bit DICOM holds only to
    # a rescale step): their DICOM is exact, so training must be bit for bit the same
    names = [p.name[: -len(".nii.gz")] for p in sorted((HIPPOCAMPUS / "images").glob("*.nii.gz"))
             if nib.load(str(p)).get_data_dtype() == np.uint8][:N_CASES]
    manifest = root / "nifti.csv"
    manifest.write_text("image,label\n" + "".join(f"{HIPPOCAMPUS / 'images' / n}.nii.gz,"
                                                   f"{HIPPOCAMPUS / 'labels' / n}.nii.gz\n" for n in names))
    export_site(manifest, root / "dicom_site", Task(LABELS))
    return manifest, root / "dicom_site"


def _experiment(path: Path, rounds: int = 1) -> dict:
    return {
        "name": "dicom_vs_nifti", "seed": 3, "arms": ["federated"],
        "task": {"labels": {"background": 0, "anterior": "Anterior", "posterior": "posterior"}, "spatial_dims": 3},
        "sites": [{"name": "a", "path": str(path), "shard": [0, 2]}, {"name": "b", "path": str(path), "shard": [1, 2]}],
        "splits": {"train": 0.6, "val": 0.2, "test": 0.2},
        "preprocessing": {"orientation": "RAS", "intensity": "percentile_rescale", "spatial_size": [32, 48, 32],
                          "resize_mode": "pad_crop"},
        "model": {"name": "UNet", "channels": [4, 8, 16], "num_res_units": 0},
        "training": {"loss": "dice_ce", "lr": 1e-2, "batch_size": 2, "local_steps": 2},
        "federation": {"rounds": rounds},
    }


def test_a_dicom_case_reads_as_its_nifti_original(sites):
    manifest, dicom = sites
    task = Task(_experiment(dicom)["task"]["labels"])
    for nifti_case, dicom_case in zip(discover_cases("n", manifest), discover_cases("d", dicom)):
        assert nifti_case.name == dicom_case.name
        a, problems_a = load_case(nifti_case, task)
        b, problems_b = load_case(dicom_case, task)
        assert problems_a == problems_b == []
        assert np.array_equal(a.image.array, b.image.array) and np.array_equal(a.label, b.label)
        assert np.allclose(a.image.affine, b.image.affine, atol=1e-6) and a.label_counts == b.label_counts


@pytest.fixture(scope="module")
def pulled(sites, orthanc, tmp_path_factory):
    """The DICOM site uploaded to Orthanc and pulled back with ``fedseg pacs pull`` (DICOMweb)."""
    _, dicom = sites
    root = tmp_path_factory.mktemp("pulled")
    cases = sorted(p for p in (dicom / "dicom").iterdir() if p.is_dir())
    orthanc.upload(*sorted(dicom.rglob("*.dcm")))
    studies = {case.name: pydicom.dcmread(case / "label.dcm", stop_before_pixels=True).StudyInstanceUID
               for case in cases}
    config = root / "pacs.toml"
    config.write_text(f'[pacs]\ndicomweb = "{orthanc.dicomweb}"\nusername_env = "T_PACS_USER"\n'
                      'password_env = "T_PACS_PASSWORD"\n'
                      + "".join(f'[[cases]]\nname = "{name}"\nstudy = "{uid}"\n' for name, uid in studies.items()))
    return config, root / "site"


def _cli(monkeypatch, *args: str) -> tuple[int, str]:
    buffer = io.StringIO()
    monkeypatch.setattr(fedseg.cli, "console", Console(file=buffer, width=300, color_system=None))
    return fedseg.cli.main(list(args)), buffer.getvalue()


def test_training_from_a_pacs_equals_training_from_nifti_and_its_seg_goes_back(sites, pulled, orthanc, tmp_path,
                                                                                monkeypatch):
    manifest, _ = sites
    config, site = pulled
    monkeypatch.setenv("T_PACS_USER", orthanc.username)
    monkeypatch.setenv("T_PACS_PASSWORD", orthanc.password)
    code, out = _cli(monkeypatch, "pacs", "pull", str(config), "--site", str(site))
    assert code == 0, out
    nifti = run_simulation(parse_experiment(_experiment(manifest)), tmp_path / "nifti")
    original = builtins.open

    def dicom_files_opened(rounds: int, out: Path) -> list[str]:
        opened: list[str] = []

        def counting_open(file, *args, **kwargs):
            if str(file).endswith(".dcm"):
                opened.append(str(file))
            return original(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", counting_open)
        try:
            run_simulation(parse_experiment(_experiment(site, rounds=rounds)), out)
        finally:
            monkeypatch.setattr(builtins, "open", original)
        return opened

    monkeypatch.setenv("FEDSEG_CACHE", str(tmp_path / "cache"))
    one_round = dicom_files_opened(1, tmp_path / "dicom")
    two_rounds = dicom_files_opened(2, tmp_path / "two_rounds")
    # every file is read when the site is first prepared, never again: not in later rounds and epochs,
    # not in the next run (it finds the cases in the site's cache)
    assert sorted(set(one_round)) == sorted(str(p) for p in (site / "dicom").rglob("*.dcm"))
    assert two_rounds == []
    from_dicom = json.loads((tmp_path / "dicom" / "results.json").read_text())
    weights_n = torch.load(tmp_path / "nifti" / "checkpoints" / "FL_global.pt", weights_only=True)
    weights_d = torch.load(tmp_path / "dicom" / "checkpoints" / "FL_global.pt", weights_only=True)
    assert all(torch.equal(weights_n[k], weights_d[k]) for k in weights_n)
    assert (tmp_path / "nifti" / "cross_site.csv").read_text() == (tmp_path / "dicom" / "cross_site.csv").read_text()
    assert nifti["model"] == from_dicom["model"] == "FL_global"

    # predict a case from its pulled DICOM, push the SEG, read it back from the PACS
    case = sorted((site / "dicom").iterdir())[-1]
    name = case.name
    code, out = _cli(monkeypatch, "predict", str(tmp_path / "dicom"), str(case), "--out", str(tmp_path / "seg"),
                     "--push", str(config))
    assert code == 0 and "1 DICOM SEG(s) stored" in out, out
    written = pydicom.dcmread(tmp_path / "seg" / f"{name}.dcm")
    back = tmp_path / "back.dcm"
    back.write_bytes(orthanc.fetch(written.SOPInstanceUID))
    problems: list = []
    series, _ = read_folder_series(case, 3, problems)
    task = Task(_experiment(site)["task"]["labels"])
    from_pacs = read_label(back, series, task.dicom_names, problems)
    code, out = _cli(monkeypatch, "predict", str(tmp_path / "nifti"), str(HIPPOCAMPUS / "images" / f"{name}.nii.gz"),
                     "--out", str(tmp_path / "nii"))
    assert code == 0, out
    expected = np.asarray(nib.load(str(tmp_path / "nii" / f"{name}.nii.gz")).dataobj)
    assert problems == [] and from_pacs.shape == expected.shape and np.array_equal(from_pacs, expected)
    assert 0 < (expected > 0).sum() and written.SegmentSequence[0].SegmentLabel == "anterior"
