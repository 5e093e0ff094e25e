"""A DICOM site (``dicom/<case>/``: an image series and its SEG, RTSTRUCT or NRRD) is discovered, loaded and
checked like any site; ``fedseg data check`` explains each DICOM problem with the file and the fix."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from rich.console import Console

import fedseg.cli
from fedseg.data.dicom.export import export_case, write_series
from fedseg.data.errors import DataError
from fedseg.data.loading import load_case
from fedseg.data.readers import Volume
from fedseg.data.site import discover_cases
from fedseg.data.task import Task

TASK = Task({"background": 0, "liver": "Liver", "tumour": ["Tumor", "Lesion"]})


def image_and_label(seed: int = 0, shape=(12, 10, 8)):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 200, size=(1, *shape)).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[2:8, 2:7, 1:6] = 1
    label[4:6, 3:5, 2:4] = 2
    affine = np.diag([0.9, 0.9, 2.0, 1.0])
    affine[:3, 3] = (-30.0 + seed, 10.0, 5.0)
    return Volume(image, affine), label


def dicom_site(root: Path, n: int = 3, names=("Liver", "Tumor")) -> Path:
    for i in range(n):
        image, label = image_and_label(i)
        export_case(image, label, list(names), root / "dicom" / f"case{i}", f"site/case{i}", modality="CT")
    return root


def check(root: Path, monkeypatch, *extra: str) -> tuple[int, list[str]]:
    buffer = io.StringIO()
    monkeypatch.setattr(fedseg.cli, "console", Console(file=buffer, width=400, color_system=None))
    code = fedseg.cli.main(["data", "check", str(root), "--labels", "background=0,liver=Liver,tumour=Tumor", *extra])
    return code, [line for line in buffer.getvalue().splitlines() if line.startswith("error")]


def test_a_dicom_case_loads_as_the_volume_and_classes_it_was_written_from(tmp_path):
    root = dicom_site(tmp_path / "site")
    cases = discover_cases("site", root)
    assert [c.name for c in cases] == ["case0", "case1", "case2"]
    for i, case in enumerate(cases):
        loaded, problems = load_case(case, TASK)
        image, label = image_and_label(i)
        assert problems == []
        assert np.array_equal(loaded.image.array, image.array) and np.allclose(loaded.image.affine, image.affine)
        assert np.array_equal(loaded.label, label) and loaded.label_counts == {
            v: int((label == v).sum()) for v in (0, 1, 2)}


def test_a_manifest_names_a_series_folder_and_its_label_file(tmp_path):
    root = dicom_site(tmp_path / "site", n=1)
    manifest = tmp_path / "cases.csv"
    manifest.write_text("image,label\nsite/dicom/case0/image,site/dicom/case0/label.dcm\n")
    [case] = discover_cases("m", manifest)
    loaded, problems = load_case(case, TASK)
    assert case.name == "image" and problems == [] and loaded.label.max() == 2


def test_the_dicom_layout_beside_another_or_a_stray_file_is_a_problem(tmp_path):
    root = dicom_site(tmp_path / "site", n=1)
    (root / "dicom" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="notes.txt.*one folder per case"):
        discover_cases("site", root)
    (root / "dicom" / "notes.txt").unlink()
    (root / "images").mkdir()
    with pytest.raises(DataError, match="both dicom/ and images/"):
        discover_cases("site", root)


def test_data_check_reads_a_good_dicom_site(tmp_path, monkeypatch):
    code, errors = check(dicom_site(tmp_path / "site"), monkeypatch)
    assert (code, errors) == (0, [])


def test_data_check_explains_each_bad_dicom_case(tmp_path, monkeypatch):
    root = dicom_site(tmp_path / "site", n=6)
    cases = root / "dicom"
    # case0: a truncated slice
    first = sorted((cases / "case0" / "image").iterdir())[2]
    first.write_bytes(first.read_bytes()[:-300])
    # case1: a missing slice (not the first or last)
    sorted((cases / "case1" / "image").iterdir())[3].unlink()
    # case2: wrong modality: a structured report where an image slice should be
    sr = pydicom.dcmread(sorted((cases / "case2" / "image").iterdir())[0])
    sr.Modality, sr.SeriesInstanceUID = "SR", pydicom.uid.generate_uid()
    sr.save_as(cases / "case2" / "image" / "report.dcm")
    # case3: its SEG refers to another case's series
    shutil.copy(cases / "case4" / "label.dcm", cases / "case3" / "label.dcm")
    # case4: no label at all
    (cases / "case4" / "label.dcm").unlink()
    # case5: a segment name the task does not declare
    image, label = image_and_label(5)
    shutil.rmtree(cases / "case5")
    export_case(image, label, ["Liver", "Spleen"], cases / "case5", "site/case5", modality="CT")
    code, errors = check(root, monkeypatch)
    assert code == 1
    text = "\n".join(errors)
    for case, words in {"case0": ("0003.dcm",), "case1": ("missing",), "case2": ("report.dcm", "SR"),
                        "case3": ("label.dcm", "series"), "case4": ("no label",), "case5": ("Spleen",)}.items():
        mine = [line for line in errors if f"{case}" in line]
        assert mine, f"{case} not reported in:\n{text}"
        assert all(any(w.lower() in line.lower() for line in mine) for w in words), (case, mine)


def test_two_series_in_one_case_folder_are_named_not_merged(tmp_path, monkeypatch):
    root = dicom_site(tmp_path / "site", n=1)
    image, _ = image_and_label(9)
    write_series(image, root / "dicom" / "case0" / "other", "another/series", modality="CT")
    code, errors = check(root, monkeypatch)
    assert code == 1 and any("case0" in e and ("mixed" in e.lower() or "series" in e.lower()) for e in errors)


def test_an_nrrd_label_pairs_with_a_nifti_image_in_an_images_labels_site(tmp_path):
    import nibabel as nib
    import nrrd

    image, label = image_and_label(3)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    nib.save(nib.Nifti1Image(image.array[0], image.affine), str(tmp_path / "images" / "p1.nii.gz"))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine  # NRRD in DICOM's patient space, as 3D Slicer saves it
    nrrd.write(str(tmp_path / "labels" / "p1.seg.nrrd"), label.astype(np.int16), index_order="F",
               header={"space": "left-posterior-superior", "space directions": lps[:3, :3].T,
                       "space origin": lps[:3, 3]})
    [case] = discover_cases("site", tmp_path)
    loaded, problems = load_case(case, Task({"background": 0, "liver": 1, "tumour": 2}))
    assert case.name == "p1" and problems == [] and np.array_equal(loaded.label, label)
