"""Issue 8, finding 8 (data side): files a site holds that used to crash or exhaust `data check`
and site reading: RGB24 NIfTI, huge declared sizes, non-UTF-8 and unprintable file names."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedseg.data.errors import DataError, Problem
from fedseg.data.inspect import inspect_site
from fedseg.data.loading import load_case
from fedseg.data.readers import DEFAULT_MAX_VALUES, MAX_VALUES_ENV, ReadError, read_volume
from fedseg.data.site import Case, discover_cases
from fedseg.data.task import Task
from fedseg.errors import UserError, printable

RGB24 = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
FEDSEG = Path(sys.executable).parent / "fedseg"


def rgb24(red: np.ndarray, green: np.ndarray, blue: np.ndarray) -> np.ndarray:
    array = np.zeros(red.shape, dtype=RGB24)
    array["R"], array["G"], array["B"] = red, green, blue
    return array


# --- RGB24 NIfTI ------------------------------------------------------------------------------

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


# --- sizes declared in headers ----------------------------------------------------------------

def header_only_nifti(path: Path, shape: tuple[int, ...], dtype=np.int16) -> Path:
    """A NIfTI whose header declares ``shape`` but that holds (almost) no pixel data."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["vox_offset"] = 352
    data = header.binaryblock + b"\0" * 4 + b"\0" * 64
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_a_huge_declared_nifti_is_refused_from_its_header(tmp_path, suffix):
    path = header_only_nifti(tmp_path / f"big{suffix}", (1024, 1024, 512))
    with pytest.raises(ReadError) as error:
        read_volume(path, 3)
    message = str(error.value)
    assert "1024 x 1024 x 512 = 536,870,912 values" in message
    assert f"limit of {DEFAULT_MAX_VALUES:,}" in message and MAX_VALUES_ENV in message


@pytest.mark.parametrize("kind", ["nifti1", "nifti2", "big-endian"])
def test_header_extensions_are_read_only_up_to_a_limit(tmp_path, kind):
    """A 4.7 MB .nii.gz declaring a 1 GiB header extension made nibabel read all of it (1.1 GB, 8 s)."""
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    image = {"nifti1": nib.Nifti1Image, "nifti2": nib.Nifti2Image, "big-endian": nib.Nifti1Image}[kind](
        data, np.eye(4))
    if kind == "big-endian":
        image = nib.Nifti1Image(data.astype(">i2"), np.eye(4), nib.Nifti1Header(endianness=">"))
    image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"small and fine" * 8))
    path = tmp_path / "c.nii.gz"
    nib.save(image, str(path))
    np.testing.assert_array_equal(read_volume(path, 3).array[0], data)  # a few bytes of extensions: fine

    header = image.header.copy()
    header["vox_offset"] = 2**30
    path.write_bytes(gzip.compress(header.binaryblock + b"\1\0\0\0" + b"\0" * 64))
    with pytest.raises(ReadError, match="pixel data 1,073,741,824 bytes into the file .*extensions"):
        read_volume(path, 3)


def test_the_limit_counts_channels_and_is_set_by_the_environment(make_site, monkeypatch):
    site = make_site()
    path = site.nifti("images", "c", np.zeros((8, 8, 8, 2), np.float32))  # 1024 values
    assert read_volume(path, 3).array.shape == (2, 8, 8, 8)
    monkeypatch.setenv(MAX_VALUES_ENV, "1000")
    with pytest.raises(ReadError, match="8 x 8 x 8 x 2 = 1,024 values, over the limit of 1,000"):
        read_volume(path, 3)
    monkeypatch.setenv(MAX_VALUES_ENV, "1024")
    assert read_volume(path, 3).array.shape == (2, 8, 8, 8)


@pytest.mark.parametrize("value", ["0", "-5", "lots", "1e9"])
def test_a_bad_limit_in_the_environment_is_a_user_error(make_site, monkeypatch, value):
    site = make_site()
    path = site.nifti("images", "c", np.zeros((4, 4, 4), np.float32))
    monkeypatch.setenv(MAX_VALUES_ENV, value)
    with pytest.raises(UserError, match=f"{MAX_VALUES_ENV}='{value}' must be a positive whole number"):
        read_volume(path, 3)


def test_a_2d_image_over_the_limit_is_refused_before_decoding(make_site, monkeypatch):
    site = make_site()
    path = site.picture("images", "c.png", np.zeros((16, 20, 3), np.uint8))
    monkeypatch.setenv(MAX_VALUES_ENV, "900")
    with pytest.raises(ReadError, match="16 x 20 x 3 = 960 values, over the limit of 900"):
        read_volume(path, 2)


def png_declaring(width: int, height: int, rgb: bool) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` grey or RGB pixels, with one tiny data chunk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2 if rgb else 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("side, rgb, size", [
    (10_000, True, "10000 x 10000 x 3 = 300,000,000 values"),  # our limit (2**28 values)
    (20_000, False, "400000000 pixels"),  # Pillow's decompression-bomb limit, reached first for grey
])
def test_a_png_declaring_a_huge_size_is_a_per_case_error(make_site, side, rgb, size):
    site = make_site()
    image = site.raw("images", "c.png", png_declaring(side, side, rgb))
    site.picture("labels", "c.png", np.zeros((4, 4), np.uint8))
    _, problems = load_case(Case("c", image, site.labels / "c.png"), Task({"background": 0, "a": 1}, 2))
    (problem,) = [p for p in problems if p.path == image]
    assert size in problem.message and "limit" in problem.message
    assert "crop or downsample" in problem.message


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
