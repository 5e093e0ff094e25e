"""The separable resampling of axis-aligned grids gives MONAI's Spacingd's grid and values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data.meta_tensor import MetaTensor
from monai.transforms import Spacingd

from fedseg.data.resample import SeparableSpacingd

KEYS = ("image", "label")


def _pair(shape, spacing, origin, rotation=None, seed=0):
    rng = np.random.default_rng(seed)
    dims = len(shape)
    affine = np.eye(dims + 1)
    affine[:dims, :dims] = np.diag(spacing) if rotation is None else rotation @ np.diag(spacing)
    affine[:dims, dims] = origin
    image = rng.normal(0, 100, (1, *shape)).astype(np.float32)
    label = rng.integers(0, 3, (1, *shape)).astype(np.uint8)
    return lambda: {"image": MetaTensor(torch.from_numpy(image.copy()), affine=torch.as_tensor(affine)),
                    "label": MetaTensor(torch.from_numpy(label.copy()), affine=torch.as_tensor(affine))}


def _compare(make, target):
    expected = Spacingd(keys=KEYS, pixdim=target, mode=("bilinear", "nearest"))(make())
    got = SeparableSpacingd(KEYS, target)(make())
    assert got["image"].shape == expected["image"].shape and got["label"].shape == expected["label"].shape
    assert torch.allclose(got["image"].affine, expected["image"].affine.to(torch.float64), atol=1e-9)
    assert float((got["image"] - expected["image"]).abs().max()) < 1e-3
    return got, expected


@settings(max_examples=25, deadline=None)
@given(shape=st.tuples(st.integers(2, 24), st.integers(2, 24), st.integers(1, 12)),
       spacing=st.tuples(*[st.sampled_from([0.5, 0.7, 0.8, 1.0, 2.5, 3.0])] * 3),
       target=st.tuples(*[st.sampled_from([0.9, 1.3, 1.6, 2.2, 4.1])] * 3),
       origin=st.tuples(*[st.floats(-50, 50)] * 3))
def test_axis_aligned_grids_resample_as_spacingd_does(shape, spacing, target, origin):
    got, expected = _compare(_pair(shape, spacing, origin), target)
    # nearest: the same label wherever the source position is not a tie (ties fall either way in MONAI's floats)
    assert float((got["label"] != expected["label"]).float().mean()) < 0.2
    assert got["label"].dtype == torch.uint8


def test_labels_without_ties_are_identical_and_2d_works():
    got, expected = _compare(_pair((40, 33, 17), (0.8, 0.8, 2.5), (3, -5, 7)), (1.6, 1.6, 2.5))
    assert torch.equal(got["label"], expected["label"].to(torch.uint8))
    _compare(_pair((25, 27), (0.5, 0.6), (1, 2)), (1.7, 1.3))


@pytest.mark.parametrize("angle", [0.3, 1.0])
def test_oblique_grids_keep_their_directions_and_resample_per_voxel_axis_too(angle):
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    got, expected = _compare(_pair((12, 14, 6), (0.8, 0.8, 2.0), (0, 0, 0), rotation), (1.7, 1.1, 2.3))
    assert float((got["label"] != expected["label"]).float().mean()) < 0.05


def test_a_grid_that_is_not_axis_aligned_goes_to_spacingd(monkeypatch):
    import fedseg.data.resample as resample

    monkeypatch.setattr(resample, "AXIS_ALIGNED", -1.0)  # nothing counts as axis-aligned
    got, expected = _compare(_pair((12, 14, 6), (0.7, 0.8, 2.0), (0, 0, 0)), (1.5, 1.5, 1.5))
    assert torch.equal(got["label"], expected["label"]) and torch.equal(got["image"], expected["image"])
