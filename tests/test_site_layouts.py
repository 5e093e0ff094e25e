"""Public datasets' layouts read as they are: nnU-Net v2 (imagesTr/ + labelsTr/ + dataset.json,
``_0000`` channel files), the Decathlon's own (4D files), and images/ + masks/."""

from __future__ import annotations

import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from rich.console import Console

import fedseg.cli
from fedseg.data.errors import DataError, Problem
from fedseg.data.inspect import inspect_site
from fedseg.data.loading import load_case
from fedseg.data.nnunet import MAX_JSON_BYTES, read_dataset_json, task_problems
from fedseg.data.site import discover_cases
from fedseg.data.task import Task

LABELS = {"background": 0, "prostate": 1}


def save(path: Path, array: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), str(path))
    return path


def label_map(shape=(6, 6, 6)) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[2:4, 2:4, 2:4] = 1
    return label


def nnunet_site(root: Path, cases=("p1", "p2"), channels=2, dataset=None) -> Path:
    """imagesTr/<case>_000<c>.nii.gz holding the constant 10 * (c + 1), labelsTr/<case>.nii.gz."""
    for case in cases:
        for c in range(channels):
            save(root / "imagesTr" / f"{case}_{c:04d}.nii.gz", np.full((6, 6, 6), 10.0 * (c + 1), np.float32))
        save(root / "labelsTr" / f"{case}.nii.gz", label_map())
    meta = dataset if dataset is not None else {
        "channel_names": {str(c): f"mod{c}" for c in range(channels)}, "labels": LABELS,
        "numTraining": len(cases), "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def messages(error: DataError) -> str:
    return "\n".join(str(p) for p in error.problems)


def test_nnunet_channel_files_are_stacked_in_suffix_order(tmp_path):
    root = nnunet_site(tmp_path / "site", channels=3)
    save(root / "imagesTs" / "t9_0000.nii.gz", np.zeros((6, 6, 6), np.float32))  # no label: not a case
    cases = discover_cases("site", root)
    assert [c.name for c in cases] == ["p1", "p2"]
    assert [p.name for p in cases[0].channels] == ["p1_0000.nii.gz", "p1_0001.nii.gz", "p1_0002.nii.gz"]
    loaded, problems = load_case(cases[0], Task(LABELS, 3, in_channels=3))
    assert problems == []
    assert [float(loaded.image.array[c].mean()) for c in range(3)] == [10.0, 20.0, 30.0]
    assert np.array_equal(loaded.label, label_map())


def test_a_missing_channel_is_a_problem_of_that_case_naming_the_file(tmp_path):
    root = nnunet_site(tmp_path / "site", cases=("p1", "p2", "p3"))
    (root / "imagesTr" / "p2_0001.nii.gz").unlink()
    with pytest.raises(DataError) as caught:
        discover_cases("site", root)
    assert len(caught.value.problems) == 1
    problem = caught.value.problems[0]
    assert problem.path == root / "imagesTr" / "p2_0001.nii.gz" and "p2_0001.nii.gz" in problem.message


def test_unpaired_files_of_an_nnunet_site_say_which_file_is_expected(tmp_path):
    root = nnunet_site(tmp_path / "site")
    (root / "labelsTr" / "p1.nii.gz").unlink()
    save(root / "labelsTr" / "p7.nii.gz", label_map())
    with pytest.raises(DataError) as caught:
        discover_cases("site", root)
    text = messages(caught.value)
    assert f"image without label: expected {root / 'labelsTr'}/p1.nii.gz" in text
    assert f"label without image: expected {root / 'imagesTr'}/p7_0000.nii.gz" in text


def test_the_decathlons_own_download_reads_4d_files_and_its_reversed_labels(tmp_path):
    root = tmp_path / "Task05_Prostate"
    four_d = np.stack([np.full((6, 6, 6), 1.0), np.full((6, 6, 6), 2.0)], axis=-1).astype(np.float32)
    save(root / "imagesTr" / "prostate_00.nii.gz", four_d)
    save(root / "labelsTr" / "prostate_00.nii.gz", label_map())
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "T2", "1": "ADC"},
                                                   "labels": {"0": "background", "1": "prostate"}}))
    [case] = discover_cases("site", root)
    assert case.channels == ()
    loaded, problems = load_case(case, Task(LABELS, 3, in_channels=2))
    assert problems == [] and loaded.image.array.shape == (2, 6, 6, 6)
    assert task_problems(root, Task(LABELS, 3, in_channels=2)) == []
    assert "task.in_channels is 1" in str(task_problems(root, Task(LABELS, 3, in_channels=1))[0])


def test_images_and_masks_is_a_site(tmp_path):
    root = tmp_path / "kvasir"
    for name in ("a", "b"):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / f"{name}.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "images" / "c.png")
    with pytest.raises(DataError) as caught:
        discover_cases("site", root)
    assert f"image without label: expected {root / 'masks' / 'c.png'}" in messages(caught.value)
    (root / "images" / "c.png").unlink()
    assert [c.label for c in discover_cases("site", root)] == [root / "masks" / "a.png", root / "masks" / "b.png"]


@pytest.mark.parametrize("extra", ["labels", "imagesTr"])
def test_a_folder_readable_two_ways_is_a_problem_not_a_guess(tmp_path, extra):
    root = tmp_path / "site"
    for folder in ("images", "masks", extra):
        (root / folder).mkdir(parents=True)
    with pytest.raises(DataError) as caught:
        discover_cases("site", root)
    [problem] = caught.value.problems
    assert problem.path == root and "masks/" in problem.message and f"{extra}/" in problem.message


@pytest.mark.parametrize("content, expected", [
    (b"[1, 2]", "not an object"),
    (b"{not json", "not a JSON file"),
    (b'{"labels": {"background": ' + b"9" * 5000 + b"}}", "not a JSON file"),
    (json.dumps({"labels": {"background": 0, "whole": [1, 2]}}).encode(), "region-based labels"),
    (json.dumps({"labels": {"background": "zero"}}).encode(), "labels must map class names"),
    (json.dumps({"channel_names": {"1": "T2"}}).encode(), "channel_names must map"),
    (b" " * (MAX_JSON_BYTES + 1), "bytes, more than"),
])
def test_a_bad_dataset_json_is_a_problem_naming_it(tmp_path, content, expected):
    root = nnunet_site(tmp_path / "site", channels=1)
    (root / "dataset.json").write_bytes(content)
    with pytest.raises(DataError) as caught:
        discover_cases("site", root)
    [problem] = caught.value.problems
    assert problem.path == root / "dataset.json" and expected in problem.message


def test_dataset_json_is_checked_against_the_task_not_trusted(tmp_path):
    root = nnunet_site(tmp_path / "site", channels=1, dataset={"channel_names": {"0": "T2"},
                                                               "labels": {"background": 0, "liver": 1, "tumour": 2}})
    found = [p.message for p in task_problems(root, Task({"background": 0, "lesion": 1}, 3))]
    assert len(found) == 2
    assert "value 1 is 'liver' here but 'lesion'" in found[0] and "'tumour' = 2 is not declared" in found[1]
    inspection = inspect_site(root, labels={"background": 0, "lesion": 1})
    assert [p.message for p in inspection.problems] == found


def test_data_check_explains_each_problem_per_case(tmp_path, monkeypatch):
    root = nnunet_site(tmp_path / "site", cases=("p1", "p2", "p3"))
    (root / "imagesTr" / "p1_0001.nii.gz").unlink()
    (root / "imagesTr" / "p3_0000.nii.gz").unlink()
    (root / "imagesTr" / "p3_0001.nii.gz").unlink()
    buffer = io.StringIO()
    monkeypatch.setattr(fedseg.cli, "console", Console(file=buffer, width=300, color_system=None))
    assert fedseg.cli.main(["data", "check", str(root)]) == 1
    errors = [line for line in buffer.getvalue().splitlines() if line.startswith("error")]
    assert len(errors) == 2
    assert "p1_0001.nii.gz" in errors[0] and "lacks channel" in errors[0]
    assert "p3.nii.gz" in errors[1] and "label without image" in errors[1]


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                    max_leaves=8)


@settings(max_examples=60, deadline=None)
@given(labels=JSON, channels=JSON)
def test_any_dataset_json_gives_checked_values_or_problems(tmp_path_factory, labels, channels):
    root = tmp_path_factory.mktemp("site")
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "channel_names": channels}))
    problems: list[Problem] = []
    meta = read_dataset_json(root, problems)
    if meta.labels is not None:
        assert all(isinstance(k, str) and type(v) is int for k, v in meta.labels.items())
    if meta.channels is not None:
        assert all(isinstance(name, str) for name in meta.channels)
    assert (meta.labels is None and labels is not None) + (meta.channels is None and channels is not None) == \
        len(problems)
