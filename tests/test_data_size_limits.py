"""Issue 8, finding 8: a file's declared size is checked before its pixels are read (a header
declaring 1024x1024x512 took 4.2 GB and 31 s; a 4.7 MB .nii.gz with a 1 GiB header extension took
1.1 GB); the limit is FEDSEG_MAX_VOXELS values, 2**28 by default."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedseg.data.loading import load_case
from fedseg.data.readers import DEFAULT_MAX_VALUES, MAX_VALUES_ENV, ReadError, read_volume
from fedseg.data.site import Case
from fedseg.data.task import Task
from fedseg.errors import UserError

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


def test_a_header_spacing_that_would_blow_up_resampling_is_a_problem_of_the_case(tmp_path):
    """A finite but absurd spacing (1e6 mm) resampled to 1 mm would need terabytes: refused before."""
    import nibabel as nib
    import numpy as np

    from fedseg.data.dataset import SiteDataset, SiteSpec
    from fedseg.data.errors import DataError
    from fedseg.data.preprocessing import Preprocessing
    from fedseg.data.splits import SplitFractions
    from fedseg.data.task import Task

    site = tmp_path / "site"
    for folder in ("images", "labels"):
        (site / folder).mkdir(parents=True)
    for i in range(4):
        spacing = 1e6 if i == 0 else 1.0
        affine = np.diag([spacing, 1.0, 1.0, 1.0])
        label = np.zeros((8, 8, 8), np.uint8)
        label[2:5, 2:5, 2:5] = 1
        nib.save(nib.Nifti1Image(np.random.rand(8, 8, 8).astype(np.float32), affine), site / "images" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), site / "labels" / f"c{i}.nii.gz")
    with pytest.raises(DataError, match=r"c0\.nii\.gz.*resampling .* would give"):
        SiteDataset(SiteSpec("site", site), Task(labels={"background": 0, "lesion": 1}, spatial_dims=3),
                    Preprocessing(spacing=(1.0, 1.0, 1.0)), SplitFractions(0.5, 0.25, 0.25), 0)
