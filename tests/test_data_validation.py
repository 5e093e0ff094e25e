"""Bad input is caught before training: DataError names every offending file and says what is wrong."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from fedseg.data.dataset import SiteDataset, SiteSpec
from fedseg.data.errors import DataError
from fedseg.data.preprocessing import Preprocessing
from fedseg.data.site import discover_cases
from fedseg.data.splits import SplitFractions


def messages_for(error: DataError, path: Path) -> list[str]:
    """The messages of the problems that name ``path`` (compared resolved, as manifests resolve)."""
    path = Path(path).resolve()
    return [p.message for p in error.problems if Path(p.path).resolve() == path]


def only_message_for(error: DataError, path: Path) -> str:
    found = messages_for(error, path)
    assert len(found) == 1, f"expected one problem for {path}, got {found}; all problems: {error}"
    return found[0]


# --- one test per kind of bad input --------------------------------------------------------------

@pytest.mark.parametrize("kind", ["garbage nifti image", "truncated png label"])
def test_unreadable_or_corrupt_file_is_named(kind, make_site, task_3d, task_2d, build_dataset):
    site = make_site()
    if kind == "garbage nifti image":
        for i in range(4):
            site.nifti_case(f"case_{i}")
        bad = site.raw("images", "case_2.nii.gz", b"this is not a NIfTI file, not even gzip" * 20)
        task = task_3d
    else:
        for i in range(4):
            site.png_case(f"case_{i}")
        bad = site.labels / "case_1.png"
        bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
        task = task_2d

    with pytest.raises(DataError) as caught:
        build_dataset(site.root, task)

    message = only_message_for(caught.value, bad)
    assert "unreadable or corrupt" in message
    assert bad.name in str(caught.value)
    assert len(caught.value.problems) == 1  # the good cases are not blamed


def test_nifti_with_valid_gzip_but_truncated_data_is_reported(make_site, task_3d, build_dataset):
    site = make_site()
    for i in range(3):
        site.nifti_case(f"case_{i}", shape=(8, 8, 8))
    bad = site.images / "case_1.nii.gz"
    raw = gzip.decompress(bad.read_bytes())
    bad.write_bytes(gzip.compress(raw[: len(raw) - 1000]))  # header fine, voxel data cut short

    with pytest.raises(DataError) as caught:
        build_dataset(site.root, task_3d, fractions=(1.0, 0.0, 0.0))
    assert "unreadable or corrupt" in only_message_for(caught.value, bad)


def test_image_without_label(nifti_site, task_3d, build_dataset):
    (nifti_site.labels / "case_03.nii.gz").unlink()
    image = nifti_site.images / "case_03.nii.gz"

    with pytest.raises(DataError) as caught:
        build_dataset(nifti_site.root, task_3d)

    message = only_message_for(caught.value, image)
    assert "image without label" in message
    assert str(nifti_site.labels / "case_03.nii.gz") in message  # says where the label was expected


def test_label_without_image(nifti_site, task_3d, build_dataset):
    (nifti_site.images / "case_04.nii.gz").unlink()
    label = nifti_site.labels / "case_04.nii.gz"

    with pytest.raises(DataError) as caught:
        build_dataset(nifti_site.root, task_3d)

    message = only_message_for(caught.value, label)
    assert "label without image" in message
    assert str(nifti_site.images / "case_04.nii.gz") in message


def test_shape_mismatch_between_image_and_label(nifti_site, task_3d, build_dataset):
    label = nifti_site.nifti("labels", "case_02", nifti_site.three_class_label((8, 8, 6)))

    with pytest.raises(DataError) as caught:
        build_dataset(nifti_site.root, task_3d)

    message = only_message_for(caught.value, label)
    assert "label shape (8, 8, 6) does not match image shape (8, 8, 8)" in message
    assert "case_02.nii.gz" in message and "resample" in message


@pytest.mark.parametrize("geometry, expected", [
    ({"spacing": (2.0, 1.0, 1.0)}, "spacing (2, 1, 1) vs (1, 1, 1)"),
    ({"origin": (0.0, 5.0, 0.0)}, "origin (0, 5, 0) vs (0, 0, 0)"),
], ids=["spacing", "origin"])
def test_affine_mismatch_between_image_and_label(geometry, expected, nifti_site, task_3d, build_dataset):
    label = nifti_site.nifti("labels", "case_01", nifti_site.three_class_label((8, 8, 8)),
                             affine=nifti_site.affine(**geometry))

    with pytest.raises(DataError) as caught:
        build_dataset(nifti_site.root, task_3d)

    message = only_message_for(caught.value, label)
    assert "affine" in message and "does not match" in message
    assert expected in message


def test_tiny_affine_difference_within_tolerance_is_accepted(make_site, task_3d, build_dataset):
    site = make_site()
    for i in range(4):
        site.nifti_case(f"case_{i}", label_affine=site.affine(origin=(1e-5, 0.0, 0.0)))
    dataset = build_dataset(site.root, task_3d)
    assert sum(len(v) for v in dataset.cases.values()) == 4


def test_non_integer_label_values(nifti_site, task_3d, build_dataset):
    values = nifti_site.three_class_label((8, 8, 8)).astype(np.float32)
    values[0, 0, 0] = 0.5
    label = nifti_site.nifti("labels", "case_05", values)

    with pytest.raises(DataError) as caught:
        build_dataset(nifti_site.root, task_3d)

    message = only_message_for(caught.value, label)
    assert "non-integer values" in message and "0.5" in message
    assert "nearest-neighbour" in message


def test_undeclared_label_values(nifti_site, task_3d, build_dataset):
    values = nifti_site.three_class_label((8, 8, 8))
    values[7, 7, 5:8] = 3  # three voxels of a value the task does not declare
    label = nifti_site.nifti("labels", "case_00", values)

    with pytest.raises(DataError) as caught:
        build_dataset(nifti_site.root, task_3d)

    message = only_message_for(caught.value, label)
    assert "undeclared label values {3: 3}" in message
    assert "task.labels" in message and "anterior" in message


def test_empty_site(make_site, task_3d, build_dataset):
    site = make_site("empty")  # images/ and labels/ exist but hold nothing

    with pytest.raises(DataError) as caught:
        build_dataset(site.root, task_3d)

    message = only_message_for(caught.value, site.root)
    assert "has no cases" in message and "images/" in message and "labels/" in message
    assert caught.value.site == "empty"


@pytest.mark.parametrize("layout", ["two cases, fractions 0.7/0.1/0.2", "manifest without test rows"])
def test_split_without_cases(layout, make_site, task_3d):
    site = make_site()
    if layout == "two cases, fractions 0.7/0.1/0.2":
        for name in ("a", "b"):
            site.nifti_case(name)
        path, fractions, empty = site.root, (0.7, 0.1, 0.2), "train"
    else:
        for name in ("a", "b", "c"):
            site.nifti_case(name)
        path = site.root / "manifest.csv"
        path.write_text("image,label,split\n"
                        "images/a.nii.gz,labels/a.nii.gz,train\n"
                        "images/b.nii.gz,labels/b.nii.gz,train\n"
                        "images/c.nii.gz,labels/c.nii.gz,val\n")
        fractions, empty = (0.7, 0.1, 0.2), "test"

    with pytest.raises(DataError) as caught:
        SiteDataset(SiteSpec("hospital", path), task_3d, Preprocessing(intensity="none"), SplitFractions(*fractions), 0)

    message = only_message_for(caught.value, path)
    assert f"the '{empty}' split has no cases" in message
    assert "split fractions" in message


def test_empty_split_is_fine_when_its_fraction_is_zero(make_site, task_3d, build_dataset):
    site = make_site()
    for name in ("a", "b", "c"):
        site.nifti_case(name)
    dataset = build_dataset(site.root, task_3d, fractions=(0.7, 0.3, 0.0))
    assert len(dataset.cases["test"]) == 0 and dataset.n_train == 2


# --- several problems at once ---------------------------------------------------------------------

def test_all_problems_of_a_site_are_reported_together(nifti_site, task_3d, build_dataset):
    corrupt = nifti_site.raw("images", "case_00.nii.gz", b"\x00garbage" * 50)
    short = nifti_site.nifti("labels", "case_01", nifti_site.three_class_label((8, 8, 6)))
    floats = nifti_site.three_class_label((8, 8, 8)).astype(np.float32)
    floats[0, 0, 0] = 0.5
    non_integer = nifti_site.nifti("labels", "case_02", floats)
    extra = nifti_site.three_class_label((8, 8, 8))
    extra[0, 0, 0] = 7
    undeclared = nifti_site.nifti("labels", "case_03", extra)

    with pytest.raises(DataError) as caught:
        build_dataset(nifti_site.root, task_3d)

    error = caught.value
    assert "unreadable or corrupt" in only_message_for(error, corrupt)
    assert "does not match image shape" in only_message_for(error, short)
    assert "non-integer" in only_message_for(error, non_integer)
    assert "undeclared label values {7: 1}" in only_message_for(error, undeclared)
    assert len(error.problems) == 4
    assert "4 data problems" in str(error)


def test_pairing_problems_are_all_reported(nifti_site):
    (nifti_site.labels / "case_01.nii.gz").unlink()
    (nifti_site.images / "case_02.nii.gz").unlink()
    nifti_site.raw("images", "notes.txt", b"scan notes")

    with pytest.raises(DataError) as caught:
        discover_cases("site", nifti_site.root)

    error = caught.value
    assert "image without label" in only_message_for(error, nifti_site.images / "case_01.nii.gz")
    assert "label without image" in only_message_for(error, nifti_site.labels / "case_02.nii.gz")
    assert "unsupported file type" in only_message_for(error, nifti_site.images / "notes.txt")


def test_all_problems_of_one_case_are_reported_together(nifti_site, task_3d, build_dataset):
    # A label that is both on the wrong grid and holds an undeclared value: fixing one must not
    # reveal the other only on the next run.
    values = nifti_site.three_class_label((8, 8, 6))
    values[0, 0, 0] = 9
    label = nifti_site.nifti("labels", "case_04", values)

    with pytest.raises(DataError) as caught:
        build_dataset(nifti_site.root, task_3d)

    messages = messages_for(caught.value, label)
    assert any("does not match image shape" in m for m in messages), messages
    assert any("undeclared label values {9: 1}" in m for m in messages), messages


def test_label_values_are_checked_even_when_the_image_is_unreadable(nifti_site, task_3d, build_dataset):
    image = nifti_site.raw("images", "case_05.nii.gz", b"not nifti" * 30)
    values = nifti_site.three_class_label((8, 8, 8))
    values[1, 1, 1] = 6
    label = nifti_site.nifti("labels", "case_05", values)

    with pytest.raises(DataError) as caught:
        build_dataset(nifti_site.root, task_3d)

    assert "unreadable or corrupt" in only_message_for(caught.value, image)
    assert "undeclared label values {6: 1}" in only_message_for(caught.value, label)


def test_empty_split_and_bad_files_are_reported_together(make_site, task_3d, build_dataset):
    site = make_site()
    site.nifti_case("a")
    site.nifti_case("b")
    corrupt = site.raw("labels", "b.nii.gz", b"garbage" * 40)

    with pytest.raises(DataError) as caught:
        build_dataset(site.root, task_3d, fractions=(0.7, 0.1, 0.2))

    assert "the 'train' split has no cases" in only_message_for(caught.value, site.root)
    assert "unreadable or corrupt" in only_message_for(caught.value, corrupt)


# --- other per-file checks ------------------------------------------------------------------------

def test_missing_labels_folder(make_site):
    site = make_site()
    site.nifti_case("a")
    (site.labels / "a.nii.gz").unlink()
    site.labels.rmdir()

    with pytest.raises(DataError) as caught:
        discover_cases("site", site.root)
    assert "missing folder" in only_message_for(caught.value, site.labels)


def test_site_path_that_does_not_exist(tmp_path):
    missing = tmp_path / "no_such_site"
    with pytest.raises(DataError) as caught:
        discover_cases("site", missing)
    assert "not found" in only_message_for(caught.value, missing)


def test_two_files_for_one_case(nifti_site):
    duplicate = nifti_site.raw("images", "case_00.nii", (nifti_site.images / "case_00.nii.gz").read_bytes())
    with pytest.raises(DataError) as caught:
        discover_cases("site", nifti_site.root)
    (problem,) = caught.value.problems
    assert "two files for case 'case_00'" in problem.message and "keep one" in problem.message
    assert {Path(problem.path).name, duplicate.name, "case_00.nii.gz"} == {"case_00.nii", "case_00.nii.gz"}
    assert str(problem).count("case_00.nii") == 2  # names both files


def test_image_with_nan_values(nifti_site, task_3d, build_dataset):
    values = np.full((8, 8, 8), 100.0, dtype=np.float32)
    values[3, 3, 3] = np.nan
    image = nifti_site.nifti("images", "case_02", values)

    with pytest.raises(DataError) as caught:
        build_dataset(nifti_site.root, task_3d)
    assert "NaN" in only_message_for(caught.value, image)


def test_multi_channel_nifti_is_not_averaged_into_one_channel(nifti_site, task_3d, build_dataset):
    # Four MR modalities (channels last, as NIfTI stores them) with task.in_channels = 1: a
    # configuration error, not an RGB picture of a grey image.
    image = nifti_site.nifti("images", "case_03", np.random.default_rng(1).normal(size=(8, 8, 8, 4)).astype(np.float32))

    with pytest.raises(DataError) as caught:
        build_dataset(nifti_site.root, task_3d)

    message = only_message_for(caught.value, image)
    assert "4 channel(s)" in message and "task.in_channels is 1" in message


def test_label_with_several_different_channels(make_site, task_2d, build_dataset):
    site = make_site()
    for i in range(4):
        site.png_case(f"c{i}")
    colour = np.zeros((16, 16, 3), dtype=np.uint8)
    colour[2:6, 2:6, 0] = 255
    colour[8:12, 8:12, 1] = 255
    label = site.picture("labels", "c2.png", colour)

    with pytest.raises(DataError) as caught:
        build_dataset(site.root, task_2d)
    assert "single-channel" in only_message_for(caught.value, label)


def test_wrong_dimensionality_says_to_set_spatial_dims(png_site, task_3d, build_dataset):
    with pytest.raises(DataError) as caught:
        build_dataset(png_site.root, task_3d)
    message = only_message_for(caught.value, png_site.images / "case_00.png")
    assert "2 spatial dimensions" in message and "task.spatial_dims" in message


# --- manifests ------------------------------------------------------------------------------------

@pytest.fixture
def manifest_site(make_site):
    site = make_site("manifest_site")
    for name in ("a", "b", "c"):
        site.nifti_case(name)
    return site


def test_manifest_with_bad_header(manifest_site):
    manifest = manifest_site.root / "cases.csv"
    manifest.write_text("img,mask\nimages/a.nii.gz,labels/a.nii.gz\n")

    with pytest.raises(DataError) as caught:
        discover_cases("site", manifest)

    message = only_message_for(caught.value, manifest)
    assert "header must have columns image,label" in message and "'img'" in message


def test_manifest_that_is_not_utf8(manifest_site):
    manifest = manifest_site.root / "cases.csv"
    manifest.write_bytes("image,label\nimages/\u00e9t\u00e9.nii.gz,labels/a.nii.gz\n".encode("latin-1"))

    with pytest.raises(DataError) as caught:
        discover_cases("site", manifest)
    message = only_message_for(caught.value, manifest)
    assert "not UTF-8" in message and "save the manifest as a UTF-8 CSV" in message


def test_manifest_with_byte_order_mark_is_read(manifest_site):
    # Spreadsheet programs save "CSV UTF-8" with a byte-order mark before the header.
    manifest = manifest_site.root / "cases.csv"
    manifest.write_text("\ufeffimage,label\nimages/a.nii.gz,labels/a.nii.gz\n", encoding="utf-8")
    cases = discover_cases("site", manifest)
    assert [c.name for c in cases] == ["a"]


def test_manifest_problems_name_lines_and_files(manifest_site):
    manifest = manifest_site.root / "cases.csv"
    manifest.write_text("image,label,split\n"
                        "images/a.nii.gz,labels/a.nii.gz,training\n"
                        "images/b.nii.gz,labels/b.nii.gz,train\n"
                        "\n"
                        "images/missing.nii.gz,labels/c.nii.gz,val\n"
                        "images/c.nii.gz,labels/c.nii.gz,train,extra\n"
                        "images/b.nii.gz,labels/b.nii.gz,test\n"
                        "images/x.nii.gz,,test\n")

    with pytest.raises(DataError) as caught:
        discover_cases("site", manifest)

    error = caught.value
    by_path = {str(p.path): p.message for p in error.problems}
    assert "split 'training' is not one of train, val, test" in by_path[f"{manifest}:2"]
    missing = only_message_for(error, manifest_site.images / "missing.nii.gz")
    assert "does not exist" in missing and f"{manifest}:5" in missing  # the blank line 4 counts
    assert "3 columns" in by_path[f"{manifest}:6"] and "extra" in by_path[f"{manifest}:6"]
    assert "case 'b' already listed on line 3" in by_path[f"{manifest}:7"]
    assert "needs both an image and a label" in by_path[f"{manifest}:8"]
    assert len(error.problems) == 5


def test_manifest_relative_paths_and_splits(manifest_site):
    manifest = manifest_site.root / "lists" / "cases.csv"
    manifest.parent.mkdir()
    manifest.write_text("image,label,split\n"
                        "../images/a.nii.gz,../labels/a.nii.gz,test\n"
                        f"{manifest_site.images / 'b.nii.gz'},{manifest_site.labels / 'b.nii.gz'},\n")
    cases = discover_cases("site", manifest)
    assert [(c.name, c.split) for c in cases] == [("a", "test"), ("b", None)]
    assert cases[0].image == (manifest_site.images / "a.nii.gz").resolve()
