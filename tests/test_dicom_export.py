"""A volume written as a DICOM series (``data.dicom.export``) reads back with its values and grid in
ITK's own series reader (the reference the DICOM readers are tested against)."""

from __future__ import annotations

import numpy as np
import pytest

from fedseg.data.dicom.export import uid, write_series
from fedseg.data.dicom.geometry import LPS_TO_RAS
from fedseg.data.readers import Volume

sitk = pytest.importorskip("SimpleITK")


def _itk(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), LPS_TO_RAS @ lps


def _oblique_affine():
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 1.2, 2.5])
    affine[:3, 3] = (-40.0, 12.5, 7.0)
    return affine


@pytest.mark.parametrize("dtype, low, high", [(np.uint8, 0, 255), (np.int16, -1024, 3000)])
def test_integer_volumes_are_written_exactly_on_an_oblique_grid(tmp_path, dtype, low, high):
    array = np.random.default_rng(0).integers(low, high, size=(1, 7, 5, 4)).astype(dtype)
    series = write_series(Volume(array, _oblique_affine()), tmp_path, "case/1", modality="CT")
    values, affine = _itk(tmp_path)
    assert np.array_equal(values, array[0]) and np.allclose(affine, _oblique_affine(), atol=1e-5)
    assert np.array_equal(series.volume.array, array.astype(np.float32))
    assert np.allclose(series.volume.affine, _oblique_affine(), atol=1e-9)
    assert len(series.files) == 4 and len(set(series.sop_instance_uids)) == 4


def test_float_volumes_are_rescaled_within_a_16_bit_step(tmp_path):
    array = np.random.default_rng(1).normal(size=(1, 6, 6, 3)).astype(np.float32)
    series = write_series(Volume(array, np.eye(4)), tmp_path, "float")
    step = (array.max() - array.min()) / 65535
    values, _ = _itk(tmp_path)
    assert np.abs(series.volume.array - array).max() <= step
    assert np.allclose(values, series.volume.array[0], atol=step)


def test_uids_are_reproducible_and_valid():
    assert uid("a") == uid("a") != uid("b")
    assert len(uid("a")) <= 64 and set(uid("a")) <= set("0123456789.")


def test_a_multi_channel_volume_is_refused(tmp_path):
    with pytest.raises(ValueError, match="one channel"):
        write_series(Volume(np.zeros((2, 3, 3, 3)), np.eye(4)), tmp_path, "x")
