"""Shared fixtures: tiny sites written to tmp_path with nibabel (NIfTI) and Pillow (PNG/JPEG)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from fedseg.data.dataset import SiteDataset, SiteSpec
from fedseg.data.preprocessing import Preprocessing
from fedseg.data.splits import SplitFractions
from fedseg.data.task import Task

_CACHE: list[str] = []


def pytest_configure(config) -> None:
    """Every test session preprocesses into a cache of its own (``FEDSEG_CACHE``, inherited by the
    site and coordinator processes tests start), removed at the end, unless one is set already."""
    if "FEDSEG_CACHE" not in os.environ:
        _CACHE.append(tempfile.mkdtemp(prefix="fedseg-test-cache-"))
        os.environ["FEDSEG_CACHE"] = _CACHE[0]


def pytest_unconfigure(config) -> None:
    for folder in _CACHE:
        shutil.rmtree(folder, ignore_errors=True)


HIPPOCAMPUS_LABELS = {"background": 0, "anterior": 1, "posterior": 2}
BINARY_LABELS = {"background": 0, "lesion": 1}


def nifti_affine(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = origin
    return affine


def three_class_label(shape) -> np.ndarray:
    """A uint8 label with values 0 (most voxels), 1 and 2 in two small blocks."""
    label = np.zeros(shape, dtype=np.uint8)
    label[1:3, 1:3, 1:3] = 1
    label[4:6, 4:6, 4:6] = 2
    return label


def disc_mask(size: int, radius: float = 4.0, centre: float | None = None) -> np.ndarray:
    """A boolean disc: the foreground of a 2D binary case."""
    c = size / 2 if centre is None else centre
    yy, xx = np.mgrid[0:size, 0:size]
    return (yy - c) ** 2 + (xx - c) ** 2 <= radius ** 2


class SiteBuilder:
    """Writes one site folder ``root/images`` + ``root/labels``; every method returns the file written."""

    def __init__(self, root: Path):
        self.root = root
        self.images = root / "images"
        self.labels = root / "labels"
        self.images.mkdir(parents=True, exist_ok=True)
        self.labels.mkdir(parents=True, exist_ok=True)
        self._rng = np.random.default_rng(0)

    affine = staticmethod(nifti_affine)
    three_class_label = staticmethod(three_class_label)

    # --- NIfTI -------------------------------------------------------------------------------
    def nifti(self, kind: str, name: str, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
        path = self.root / kind / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(array), nifti_affine() if affine is None else affine), str(path))
        return path

    def nifti_case(self, name: str, shape=(8, 8, 8), label: np.ndarray | None = None,
                   image_affine: np.ndarray | None = None, label_affine: np.ndarray | None = None) -> tuple[Path, Path]:
        image = self._rng.normal(100.0, 10.0, shape).astype(np.float32)
        label = three_class_label(shape) if label is None else label
        return (self.nifti("images", name, image, image_affine),
                self.nifti("labels", name, label, image_affine if label_affine is None else label_affine))

    # --- 2D images ---------------------------------------------------------------------------
    def picture(self, kind: str, filename: str, array: np.ndarray, **save_options) -> Path:
        path = self.root / kind / filename
        Image.fromarray(np.asarray(array)).save(path, **save_options)
        return path

    def png_case(self, name: str, size: int = 16, mask: np.ndarray | None = None,
                 image_suffix: str = "png") -> tuple[Path, Path]:
        """A grey image and a 0/255 mask (the usual way 2D binary masks are distributed)."""
        mask = disc_mask(size) if mask is None else mask
        image = np.clip(60 + 120 * mask + self._rng.normal(0, 5, mask.shape), 0, 255).astype(np.uint8)
        return (self.picture("images", f"{name}.{image_suffix}", image),
                self.picture("labels", f"{name}.png", (mask * 255).astype(np.uint8)))

    # --- anything else -----------------------------------------------------------------------
    def raw(self, kind: str, filename: str, data: bytes) -> Path:
        path = self.root / kind / filename
        path.write_bytes(data)
        return path


@pytest.fixture
def make_site(tmp_path):
    """``make_site("name")`` -> a SiteBuilder for an empty site folder ``tmp_path/name``."""

    def make(name: str = "site") -> SiteBuilder:
        return SiteBuilder(tmp_path / name)

    return make


@pytest.fixture
def nifti_site(make_site) -> SiteBuilder:
    """A good 3D site: 6 cases of 8x8x8 voxels with labels 0/1/2, 1 mm, identity affine."""
    site = make_site("nifti_site")
    for i in range(6):
        site.nifti_case(f"case_{i:02d}")
    return site


@pytest.fixture
def png_site(make_site) -> SiteBuilder:
    """A good 2D binary site: 6 cases of 16x16 grey PNG images with 0/255 PNG masks."""
    site = make_site("png_site")
    for i in range(6):
        site.png_case(f"case_{i:02d}")
    return site


@pytest.fixture
def task_3d() -> Task:
    return Task(dict(HIPPOCAMPUS_LABELS), spatial_dims=3, in_channels=1)


@pytest.fixture
def task_2d() -> Task:
    return Task(dict(BINARY_LABELS), spatial_dims=2, in_channels=1)


@pytest.fixture
def build_dataset():
    """``build_dataset(path, task, fractions=(train, val, test), seed=0, **preprocessing)`` -> SiteDataset."""

    def build(path: Path, task: Task, fractions=(0.5, 0.25, 0.25), seed: int = 0, shard=None,
              **preprocessing) -> SiteDataset:
        preprocessing.setdefault("intensity", "none")
        return SiteDataset(SiteSpec(Path(path).stem, Path(path), shard), task, Preprocessing(**preprocessing),
                           SplitFractions(*fractions), seed)

    return build


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """A real Orthanc PACS for the session (tests/orthanc_harness.py); skipped when it is not installed."""
    from orthanc_harness import missing, running_orthanc

    reason = missing()
    if reason:
        pytest.skip(reason)
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server
