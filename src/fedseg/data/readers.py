"""Read one image or label file into a channel-first array with its voxel-to-world affine.

NIfTI goes through nibabel (the affine carries spacing and orientation); 2D images through
Pillow, which has no geometry, so they get an identity affine (1 unit per pixel).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

NIFTI_SUFFIXES = (".nii.gz", ".nii")
IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SUPPORTED_SUFFIXES = NIFTI_SUFFIXES + IMAGE_2D_SUFFIXES
LOSSY_SUFFIXES = (".jpg", ".jpeg")


class ReadError(Exception):
    """A file could not be read as an image; the message says why."""


@dataclass
class Volume:
    """Pixel data (channels first: ``[C, *spatial]``) and its voxel-to-world affine."""

    array: np.ndarray
    affine: np.ndarray

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[1:])

    @property
    def spacing(self) -> tuple[float, ...]:
        n = len(self.spatial_shape)
        return tuple(float(s) for s in np.linalg.norm(self.affine[:n, :n], axis=0))


def case_name(path: Path) -> str:
    """The case identifier of a file: its name without the image suffix."""
    name = path.name
    for suffix in SUPPORTED_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def is_supported(path: Path) -> bool:
    return path.name.lower().endswith(SUPPORTED_SUFFIXES)


def read_volume(path: Path, spatial_dims: int) -> Volume:
    """Read ``path`` as a ``spatial_dims``-D image; raise ReadError with a reason otherwise."""
    if not path.is_file():
        raise ReadError("file does not exist")
    if not is_supported(path):
        raise ReadError(f"unsupported format; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    try:
        if path.name.lower().endswith(NIFTI_SUFFIXES):
            volume = _read_nifti(path)
        else:
            volume = _read_2d(path)
    except ReadError:
        raise
    except Exception as exc:  # nibabel/Pillow/zlib raise many types for corrupt files
        raise ReadError(f"unreadable or corrupt ({type(exc).__name__}: {exc})") from exc
    return _as_dims(volume, spatial_dims)


def _read_nifti(path: Path) -> Volume:
    image = nib.load(str(path))
    data = np.asarray(image.dataobj)
    if data.ndim == 4:  # channels stored last, as NIfTI does
        data = np.moveaxis(data, -1, 0)
    else:
        data = data[None]
    return Volume(data, np.asarray(image.affine, dtype=np.float64))


def _read_2d(path: Path) -> Volume:
    with Image.open(path) as image:
        frames = getattr(image, "n_frames", 1)
        if frames > 1:  # e.g. a multi-page TIFF stack: reading page 1 alone would lose data silently
            raise ReadError(f"has {frames} frames/pages; a 2D image file must hold one image: save each "
                            "slice as its own file, or the stack as a 3D NIfTI")
        image.load()
        if image.mode in ("RGBA", "LA"):
            image = image.convert(image.mode[:-1])
        if image.mode == "P":  # palette indices are the label values of palette masks
            data = np.asarray(image)
        elif image.mode in ("1", "CMYK", "YCbCr", "HSV"):
            data = np.asarray(image.convert("L" if image.mode == "1" else "RGB"))
        else:
            data = np.asarray(image)
    # Pillow gives rows first; keep (row, column) as spatial axes 0 and 1.
    data = data[None] if data.ndim == 2 else np.moveaxis(data, -1, 0)
    return Volume(np.ascontiguousarray(data), np.eye(3))


def _as_dims(volume: Volume, spatial_dims: int) -> Volume:
    spatial = volume.array.shape[1:]
    if len(spatial) == spatial_dims:
        if volume.affine.shape != (spatial_dims + 1, spatial_dims + 1):  # a 2D NIfTI: 4x4 affine
            affine = np.eye(spatial_dims + 1)
            affine[:spatial_dims, :spatial_dims] = volume.affine[:spatial_dims, :spatial_dims]
            affine[:spatial_dims, -1] = volume.affine[:spatial_dims, -1]
            return Volume(volume.array, affine)
        return volume
    if spatial_dims == 2 and len(spatial) == 3 and spatial[2] == 1:
        affine = np.eye(3)
        affine[:2, :2] = volume.affine[:2, :2]
        affine[:2, 2] = volume.affine[:2, 3]
        return Volume(volume.array[..., 0], affine)
    raise ReadError(
        f"has {len(spatial)} spatial dimensions {tuple(spatial)} but the task is {spatial_dims}D; "
        "set task.spatial_dims to match the data"
    )
