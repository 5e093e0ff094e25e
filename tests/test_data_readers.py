"""Reading files into arrays and turning stored label values into class indices."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from fedseg.data.errors import DataError
from fedseg.data.loading import load_case
from fedseg.data.readers import ReadError, case_name, read_volume
from fedseg.data.site import Case
from fedseg.data.task import Task


def case_of(image: Path, label: Path) -> Case:
    return Case(case_name(image), image, label)


def stored_pixels(path: Path) -> tuple[str, np.ndarray]:
    """The Pillow mode and pixel values of a picture file, as saved."""
    with Image.open(path) as image:
        return image.mode, np.asarray(image)


# --- readers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("filename, name", [
    ("hippocampus_001.nii.gz", "hippocampus_001"), ("scan.NII", "scan"), ("a.b.png", "a.b"),
    ("x.JPEG", "x"), ("slice.tiff", "slice"),
])
def test_case_name_strips_the_image_suffix(filename, name):
    assert case_name(Path(filename)) == name


def test_nifti_keeps_shape_and_affine(tmp_path):
    affine = np.diag([0.5, 0.8, 2.0, 1.0])
    affine[:3, 3] = (10.0, -4.0, 3.0)
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    path = tmp_path / "a.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))

    volume = read_volume(path, spatial_dims=3)

    assert volume.array.shape == (1, 4, 5, 6)
    np.testing.assert_array_equal(volume.array[0], data)
    np.testing.assert_allclose(volume.affine, affine)
    assert volume.spacing == pytest.approx((0.5, 0.8, 2.0))


def test_four_dimensional_nifti_is_read_channels_first(tmp_path):
    data = np.random.default_rng(0).normal(size=(4, 5, 6, 2)).astype(np.float32)
    path = tmp_path / "two_modalities.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))

    volume = read_volume(path, spatial_dims=3)
    assert volume.array.shape == (2, 4, 5, 6)
    np.testing.assert_array_equal(volume.array[1], data[..., 1])


def test_single_slice_nifti_is_read_as_2d_with_its_in_plane_geometry(tmp_path):
    affine = np.diag([0.7, 0.9, 3.0, 1.0])
    affine[:3, 3] = (5.0, 6.0, 7.0)
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((6, 7, 1), dtype=np.float32), affine), str(path))

    volume = read_volume(path, spatial_dims=2)
    assert volume.array.shape == (1, 6, 7)
    assert volume.affine.shape == (3, 3)
    assert volume.spacing == pytest.approx((0.7, 0.9))
    np.testing.assert_allclose(volume.affine[:2, 2], (5.0, 6.0))


def test_2d_nifti_image_pairs_with_a_png_label(tmp_path):
    # A 2D NIfTI (two axes) gets a 2D (3x3) affine, so it can be compared with a picture's.
    image = tmp_path / "c.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((6, 7), dtype=np.float32), np.eye(4)), str(image))
    label = tmp_path / "c.png"
    mask = np.zeros((6, 7), dtype=np.uint8)
    mask[2:4, 2:5] = 1
    Image.fromarray(mask).save(label)

    assert read_volume(image, spatial_dims=2).affine.shape == (3, 3)
    loaded, problems = load_case(case_of(image, label), Task({"background": 0, "lesion": 1}, 2, 1))
    assert problems == []
    assert loaded.label.sum() == 6


def test_png_is_rows_first_with_identity_affine(tmp_path):
    data = np.arange(6 * 9, dtype=np.uint8).reshape(6, 9)
    path = tmp_path / "a.png"
    Image.fromarray(data).save(path)

    volume = read_volume(path, spatial_dims=2)
    assert volume.array.shape == (1, 6, 9)
    np.testing.assert_array_equal(volume.array[0], data)
    np.testing.assert_array_equal(volume.affine, np.eye(3))


def test_rgba_png_drops_alpha_and_palette_png_keeps_indices(tmp_path):
    rgba = np.zeros((5, 5, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert read_volume(tmp_path / "rgba.png", 2).array.shape == (3, 5, 5)

    indices = np.zeros((5, 5), dtype=np.uint8)
    indices[1:3, 1:3] = 2
    palette = Image.fromarray(indices)
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    assert palette.mode == "P"
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_volume(tmp_path / "palette.png", 2).array[0], indices)


def test_garbage_nifti_raises_read_error_with_reason(tmp_path):
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(b"definitely not gzip")
    with pytest.raises(ReadError, match="unreadable or corrupt"):
        read_volume(path, 3)


def test_truncated_png_raises_read_error(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ReadError, match="unreadable or corrupt"):
        read_volume(path, 2)


def test_multi_page_tiff_is_not_read_as_its_first_page(tmp_path):
    path = tmp_path / "stack.tif"
    pages = [Image.fromarray(np.full((6, 6), v, dtype=np.uint8)) for v in (10, 20, 30)]
    pages[0].save(path, save_all=True, append_images=pages[1:])
    with pytest.raises(ReadError, match="has 3 frames/pages") as caught:
        read_volume(path, 2)
    assert "3D NIfTI" in str(caught.value)


def test_single_page_tiff_is_read(tmp_path):
    path = tmp_path / "one.tif"
    Image.fromarray(np.full((6, 5), 7, dtype=np.uint8)).save(path)
    assert read_volume(path, 2).array.shape == (1, 6, 5)


def test_wrong_dimensionality_is_a_read_error(tmp_path):
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), dtype=np.float32), np.eye(4)), str(path))
    with pytest.raises(ReadError, match=r"3 spatial dimensions \(4, 4, 4\) but the task is 2D"):
        read_volume(path, 2)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(ReadError, match="does not exist"):
        read_volume(tmp_path / "nothing.png", 2)
    (tmp_path / "scan.dcm").write_bytes(b"DICM")
    with pytest.raises(ReadError, match="unsupported format"):
        read_volume(tmp_path / "scan.dcm", 2)


# --- 2D masks: binarisation at 128 -------------------------------------------------------------

def test_png_mask_stored_as_0_255_is_binarised(png_site, task_2d):
    image, label = png_site.images / "case_00.png", png_site.labels / "case_00.png"
    _, stored = stored_pixels(label)
    assert set(np.unique(stored)) == {0, 255}

    loaded, problems = load_case(case_of(image, label), task_2d)

    assert problems == []
    assert loaded.binarised is True
    assert set(np.unique(loaded.label)) == {0, 1}
    np.testing.assert_array_equal(loaded.label, stored >= 128)
    assert loaded.label_counts == {0: int((stored == 0).sum()), 255: int((stored == 255).sum())}


def test_lossy_jpeg_mask_is_binarised_at_128(make_site, task_2d):
    site = make_site()
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:24, 10:22] = True
    image = site.picture("images", "c.png", (mask * 150 + 40).astype(np.uint8))
    label = site.picture("labels", "c.jpg", (mask * 255).astype(np.uint8), quality=60)
    _, stored = stored_pixels(label)
    assert len(np.unique(stored)) > 2  # JPEG artefacts: values other than 0 and 255

    loaded, problems = load_case(case_of(image, label), task_2d)

    assert problems == []
    assert loaded.binarised is True
    assert set(np.unique(loaded.label)) == {0, 1}
    np.testing.assert_array_equal(loaded.label, stored >= 128)
    assert (loaded.label == mask).mean() > 0.98


def test_binarised_masks_map_to_a_non_contiguous_foreground_value(png_site):
    task = Task({"background": 0, "tumour": 4}, spatial_dims=2)
    loaded, problems = load_case(case_of(png_site.images / "case_01.png", png_site.labels / "case_01.png"), task)
    assert problems == [] and loaded.binarised
    assert set(np.unique(loaded.label)) == {0, 1}


def test_nifti_label_with_undeclared_values_is_not_binarised(make_site, task_2d):
    site = make_site()
    values = np.zeros((8, 8, 1), dtype=np.uint8)
    values[2:5, 2:5] = 255
    image = site.nifti("images", "c", np.ones((8, 8, 1), dtype=np.float32))
    label = site.nifti("labels", "c", values)

    loaded, problems = load_case(case_of(image, label), task_2d)

    assert loaded is None
    (problem,) = problems
    assert problem.path == label
    assert "undeclared label values {255: 9}" in problem.message


def test_2d_mask_is_not_binarised_for_a_multi_class_task(png_site):
    task = Task({"background": 0, "a": 1, "b": 2}, spatial_dims=2)
    label = png_site.labels / "case_02.png"
    loaded, problems = load_case(case_of(png_site.images / "case_02.png", label), task)
    assert loaded is None
    assert [p.path for p in problems] == [label]
    assert "undeclared label values {255:" in problems[0].message


def test_png_mask_with_declared_values_is_used_as_stored(make_site, task_2d):
    site = make_site()
    mask = np.zeros((12, 12), dtype=np.uint8)
    mask[3:6, 3:9] = 1
    image = site.picture("images", "c.png", np.full((12, 12), 90, dtype=np.uint8))
    label = site.picture("labels", "c.png", mask)

    loaded, problems = load_case(case_of(image, label), task_2d)
    assert problems == [] and loaded.binarised is False
    np.testing.assert_array_equal(loaded.label, mask)


# --- channels and label mapping ----------------------------------------------------------------

def test_rgb_picture_of_a_grey_image_is_accepted_with_one_input_channel(make_site, task_2d):
    site = make_site()
    grey = np.random.default_rng(0).integers(0, 255, (16, 16), dtype=np.uint8)
    image = site.picture("images", "c.png", np.stack([grey] * 3, axis=-1))
    label = site.picture("labels", "c.png", np.zeros((16, 16), dtype=np.uint8))
    assert stored_pixels(image)[0] == "RGB"

    loaded, problems = load_case(case_of(image, label), task_2d)

    assert problems == []
    assert loaded.image.array.shape == (1, 16, 16)
    assert loaded.image.array.dtype == np.float32
    np.testing.assert_allclose(loaded.image.array[0], grey)


def test_rgb_image_with_three_input_channels_keeps_them(make_site):
    site = make_site()
    colour = np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    image = site.picture("images", "c.png", colour)
    label = site.picture("labels", "c.png", np.zeros((16, 16), dtype=np.uint8))
    loaded, problems = load_case(case_of(image, label), Task({"background": 0, "x": 1}, 2, in_channels=3))
    assert problems == []
    np.testing.assert_array_equal(loaded.image.array, np.moveaxis(colour, -1, 0))


def test_grey_image_with_three_input_channels_is_reported(png_site):
    image = png_site.images / "case_00.png"
    loaded, problems = load_case(case_of(image, png_site.labels / "case_00.png"),
                                 Task({"background": 0, "x": 1}, 2, in_channels=3))
    assert loaded is None
    assert [p.path for p in problems] == [image]
    assert "1 channel(s) but task.in_channels is 3" in problems[0].message


def test_non_contiguous_declared_labels_map_to_class_indices(make_site):
    site = make_site()
    values = np.zeros((6, 6, 6), dtype=np.uint8)
    values[1:3, 1:3, 1:3] = 4
    image, label = site.nifti_case("c", shape=(6, 6, 6), label=values)
    task = Task({"background": 0, "organ": 4}, spatial_dims=3)

    loaded, problems = load_case(case_of(image, label), task)

    assert problems == []
    assert loaded.binarised is False
    assert loaded.label_counts == {0: 216 - 8, 4: 8}
    assert set(np.unique(loaded.label)) == {0, 1}
    np.testing.assert_array_equal(loaded.label, values == 4)


def test_three_declared_values_map_in_value_order(make_site):
    site = make_site()
    values = np.zeros((6, 6, 6), dtype=np.int16)
    values[0, 0, :3] = 7
    values[5, 5, :2] = 2
    image, label = site.nifti_case("c", shape=(6, 6, 6), label=values)
    task = Task({"background": 0, "big": 7, "small": 2}, spatial_dims=3)

    loaded, problems = load_case(case_of(image, label), task)

    assert problems == []
    assert task.class_names == ["background", "small", "big"]
    assert (loaded.label == 2).sum() == 3 and (loaded.label == 1).sum() == 2


@pytest.mark.parametrize("labels, expected", [
    ({"background": 0, "organ": -1}, "integers from 0 to"),
    ({"background": 0, "organ": 1.5}, "integers from 0 to"),
    ({"background": 0, "organ": 2**31}, "integers from 0 to 2147483647"),
    ({"organ": 1, "tumour": 2}, "background class to 0"),
    ({"background": 0, "organ": 0}, "distinct values"),
])
def test_task_rejects_label_values_that_cannot_be_stored_class_values(labels, expected):
    with pytest.raises(ValueError, match=expected):
        Task(labels)


def test_task_accepts_numpy_integer_label_values():
    assert Task({"background": np.int64(0), "organ": np.uint8(3)}).class_values == [0, 3]


def test_integer_valued_float_label_is_accepted(make_site, task_3d):
    site = make_site()
    values = site.three_class_label((8, 8, 8)).astype(np.float32)
    image, label = site.nifti_case("c", label=values)
    loaded, problems = load_case(case_of(image, label), task_3d)
    assert problems == []
    assert loaded.label_counts == {0: 512 - 16, 1: 8, 2: 8}


def test_dataset_of_a_binarised_jpeg_site(make_site, task_2d, build_dataset):
    # A whole 2D site with JPEG images and 0/255 PNG masks goes through SiteDataset.
    site = make_site()
    for i in range(4):
        site.png_case(f"c{i}", image_suffix="jpg")
    dataset = build_dataset(site.root, task_2d)
    labels = [int(v) for split in dataset.cases.values() for c in split for v in np.unique(np.asarray(c["label"]))]
    assert set(labels) == {0, 1}


def test_data_error_message_lists_every_problem(nifti_site, task_3d, build_dataset):
    (nifti_site.labels / "case_00.nii.gz").unlink()
    (nifti_site.labels / "case_01.nii.gz").unlink()
    with pytest.raises(DataError) as caught:
        build_dataset(nifti_site.root, task_3d)
    text = str(caught.value)
    assert text.startswith("site 'nifti_site': 2 data problems:")
    assert "case_00.nii.gz: image without label" in text and "case_01.nii.gz: image without label" in text
