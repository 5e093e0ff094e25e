"""Issue 8, finding 8 (data side): files a site holds that used to crash `data check` or site reading:
RGB24 NIfTI, complex or empty volumes, singular affines, non-UTF-8 and unprintable file names.
Sizes declared in headers: test_data_size_limits.py."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedseg.data.errors import DataError, Problem
from fedseg.data.inspect import inspect_site
from fedseg.data.loading import load_case
from fedseg.data.readers import ReadError, read_volume
from fedseg.data.site import Case, discover_cases
from fedseg.data.task import Task
from fedseg.errors import printable

RGB24 = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
FEDSEG = Path(sys.executable).parent / "fedseg"


def rgb24(red: np.ndarray, green: np.ndarray, blue: np.ndarray) -> np.ndarray:
    array = np.zeros(red.shape, dtype=RGB24)
    array["R"], array["G"], array["B"] = red, green, blue
    return array


# --- what a volume holds: colour, dtype, size, geometry ----------------------------------------

def test_rgb24_nifti_is_read_as_three_colour_channels(make_site):
    site = make_site()
    red = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6)
    path = site.nifti("images", "colour", rgb24(red, red // 2, np.full_like(red, 7)))

    volume = read_volume(path, spatial_dims=3)

    assert volume.array.shape == (3, 4, 5, 6) and volume.colour
    np.testing.assert_array_equal(volume.array[0], red)
    np.testing.assert_array_equal(volume.array[1], red // 2)
    assert (volume.array[2] == 7).all()


def test_rgb24_nifti_case_is_averaged_to_grey_for_one_channel_and_kept_for_three(make_site):
    site = make_site()
    shape = (8, 8, 8)
    red = np.random.default_rng(0).integers(0, 255, shape).astype(np.uint8)
    image = site.nifti("images", "c", rgb24(red, red, np.zeros(shape, np.uint8)))
    grey_label = site.three_class_label(shape)
    label = site.nifti("labels", "c", rgb24(grey_label, grey_label, grey_label))  # a grey mask saved as RGB
    labels = {"background": 0, "a": 1, "b": 2}

    grey, problems = load_case(Case("c", image, label), Task(labels, 3, in_channels=1))
    assert problems == []
    np.testing.assert_allclose(grey.image.array[0], red.astype(np.float32) * 2 / 3, rtol=1e-6)
    np.testing.assert_array_equal(grey.label, grey_label)

    colour, problems = load_case(Case("c", image, label), Task(labels, 3, in_channels=3))
    assert problems == [] and colour.image.array.shape == (3, *shape)


def test_four_modalities_are_still_not_averaged(make_site):
    """Only colour channels are averaged: a 4D NIfTI's channels are modalities."""
    site = make_site()
    image = site.nifti("images", "c", np.zeros((8, 8, 8, 3), np.float32))
    label = site.nifti("labels", "c", np.zeros((8, 8, 8), np.uint8))
    _, problems = load_case(Case("c", image, label), Task({"background": 0, "a": 1}, 3, in_channels=1))
    assert ["3 channel(s) but task.in_channels is 1" in p.message for p in problems] == [True]


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_nifti_is_a_per_case_error(make_site, dtype):
    site = make_site()
    path = site.nifti("images", "c", np.ones((4, 4, 4), dtype) * (1 + 2j))
    with pytest.raises(ReadError, match="complex.*store real numbers"):
        read_volume(path, 3)


def test_a_zero_sized_volume_is_a_per_case_error(make_site):
    site = make_site()
    path = site.nifti("images", "c", np.zeros((4, 0, 4), np.float32))
    with pytest.raises(ReadError, match="holds no voxels"):
        read_volume(path, 3)


def test_labels_with_a_huge_declared_value_are_mapped_without_a_huge_table(make_site):
    site = make_site()
    values = np.zeros((4, 4, 4), np.int64)
    values[0, 0, 0] = 2**31 - 1
    image = site.nifti("images", "c", np.zeros((4, 4, 4), np.float32))
    label = site.labels / "c.nii.gz"
    nib.save(nib.Nifti1Image(values, np.eye(4), dtype=np.int64), str(label))
    loaded, problems = load_case(Case("c", image, label), Task({"background": 0, "organ": 2**31 - 1}, 3))
    assert problems == [] and loaded.label.sum() == 1 and loaded.label[0, 0, 0] == 1


@pytest.mark.parametrize("affine", [np.diag([0.0, 1, 1, 1]), np.array([[1.0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0],
                                                                       [0, 0, 0, 1]])])
def test_a_singular_affine_is_a_per_case_error(make_site, affine):
    """Such a header made MONAI's orientation transform raise while the site was prepared for training."""
    site = make_site()
    path = site.nifti("images", "c", np.zeros((4, 4, 4), np.float32))
    raw = gzip.decompress(path.read_bytes())
    header = nib.Nifti1Header(raw[:348], check=False)
    header["srow_x"], header["srow_y"], header["srow_z"] = affine[:3]
    header["sform_code"] = 1
    path.write_bytes(gzip.compress(header.binaryblock + raw[348:]))
    with pytest.raises(ReadError, match="singular affine .* fix the header's sform/qform"):
        read_volume(path, 3)


# --- file names -------------------------------------------------------------------------------

def bytes_named(folder: Path, name: bytes, data: bytes) -> None:
    with open(os.path.join(os.fsencode(folder), name), "wb") as handle:
        handle.write(data)


def png_bytes(make_site) -> bytes:
    return make_site("source").picture("images", "x.png", np.zeros((16, 16), np.uint8)).read_bytes()


@pytest.mark.parametrize("name", [b"case\xff.png", b"Doe\xe9.png", b"esc\x1b[31m.png", b"line\nbreak.png"])
def test_unprintable_file_names_are_per_case_errors(make_site, name):
    data = png_bytes(make_site)
    site = make_site()
    site.png_case("good")
    for folder in (site.images, site.labels):
        bytes_named(folder, name, data)

    with pytest.raises(DataError) as error:
        discover_cases("site", site.root)

    problems = error.value.problems
    assert len(problems) == 2 and all("rename the file" in p.message for p in problems)
    shown = printable(os.fsdecode(name))
    assert all(shown in str(p) and printable(str(p)) == str(p) for p in problems)
    str(error.value).encode("utf-8")  # the whole error can be printed and logged

    inspection = inspect_site(site.root)
    assert [c.name for c in inspection.cases] == [] and len(inspection.problems) == 2


def test_a_manifest_entry_with_an_unprintable_name_is_a_per_case_error(make_site):
    site = make_site()
    site.png_case("good")
    bytes_named(site.images, b"bad\xff.png", (site.images / "good.png").read_bytes())
    manifest = site.root / "cases.csv"
    manifest.write_text("image,label\nimages/good.png,labels/good.png\n"
                        "images/link.png,labels/good.png\n")
    os.symlink(os.path.join(os.fsencode(site.images), b"bad\xff.png"), site.images / "link.png")

    with pytest.raises(DataError) as error:
        discover_cases("site", manifest)
    (problem,) = error.value.problems
    assert "bad\\xff" in str(problem) and f"{manifest}:3" in str(problem) and "rename the file" in str(problem)


def test_printable_escapes_what_a_terminal_or_a_utf8_file_cannot_take():
    assert printable(os.fsdecode(b"/data/case\xff.png")) == "/data/case\\xff.png"
    assert printable("a\nb\x1b[31m\u200bc\u202e") == "a\\x0ab\\x1b[31m\\u200bc\\u202e"
    assert printable("Müller 中 [1]") == "Müller 中 [1]"
    assert str(Problem(Path(os.fsdecode(b"x\xfe")), "bad\tthing")) == "x\\xfe: bad\\x09thing"


def test_data_check_prints_a_non_utf8_name_escaped_on_a_real_terminal_stream(make_site):
    data = png_bytes(make_site)
    site = make_site()
    site.png_case("good")
    for folder in (site.images, site.labels):
        bytes_named(folder, b"Doe\xff.png", data)

    done = subprocess.run([str(FEDSEG), "data", "check", str(site.root)], capture_output=True, timeout=120,
                          env={**os.environ, "COLUMNS": "250", "PYTHONIOENCODING": "utf-8"})

    output = done.stdout.decode("utf-8")  # strict: no raw non-UTF-8 bytes reach the terminal
    assert done.returncode == 1, output + done.stderr.decode("utf-8", "replace")
    assert "Traceback" not in done.stderr.decode("utf-8", "replace")
    assert output.count("Doe\\xff") >= 2 and "rename the file" in output
    assert "0 case(s) ok, 2 problem(s)" in output  # as for any pairing problem: the site is not read


def test_site_reading_for_training_refuses_a_non_utf8_name_before_training(make_site, build_dataset, task_2d):
    """The finding: such a name passed site reading and training, then the run died writing cross_site.csv."""
    data = png_bytes(make_site)
    site = make_site("hospital_a")
    for i in range(5):
        site.png_case(f"case_{i}")
    for folder in (site.images, site.labels):
        bytes_named(folder, b"Doe_John\xff.png", data)
    with pytest.raises(DataError) as error:
        build_dataset(site.root, task_2d)
    assert "site 'hospital_a': 2 data problems" in str(error.value) and "Doe_John\\xff" in str(error.value)
    str(error.value).encode("utf-8")
