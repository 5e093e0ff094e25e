"""Read one image or label file into a channel-first array with its voxel-to-world affine.

NIfTI goes through nibabel (the affine carries spacing and orientation), NRRD through pynrrd
(``data.dicom.labels.read_nrrd``: space directions and origin, LPS or RAS); 2D images through
Pillow, which has no geometry, so they get an identity affine (1 unit per pixel).

Files are untrusted: the size a header declares is checked against ``max_values()`` before any
pixel is read, and every failure becomes a ReadError (the caller reports it per case).
An RGB24/RGBA32 NIfTI is read as 3 colour channels, like an RGB picture.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from fedseg.errors import UserError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
NRRD_SUFFIXES = (".seg.nrrd", ".nrrd", ".nhdr")  # 3D Slicer's segmentation first: its case name drops both
IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SUPPORTED_SUFFIXES = NIFTI_SUFFIXES + NRRD_SUFFIXES + IMAGE_2D_SUFFIXES
LOSSY_SUFFIXES = (".jpg", ".jpeg")
MAX_VALUES_ENV = "FEDSEG_MAX_VOXELS"
DEFAULT_MAX_VALUES = 2**28
"""Voxels x channels one file may hold: 1 GiB as float32 (512 x 512 x 1024 CT fits)."""
MAX_NIFTI_OFFSET = 2**24
"""Bytes before a NIfTI's pixel data (header and extensions) that are read: 16 MiB."""


class ReadError(Exception):
    """A file could not be read as an image; the message says why."""


@dataclass
class Volume:
    """Pixel data (channels first: ``[C, *spatial]``) and its voxel-to-world affine."""

    array: np.ndarray
    affine: np.ndarray
    colour: bool = False
    """The channels are the colours of a picture (RGB), not separate modalities."""

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


def max_values() -> int:
    """The most values (voxels x channels) a file may hold: $FEDSEG_MAX_VOXELS, else 2**28."""
    text = os.environ.get(MAX_VALUES_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_VALUES
    try:
        limit = int(text.replace("_", ""))
    except ValueError:
        limit = 0
    if limit < 1:
        raise UserError(f"{MAX_VALUES_ENV}={text!r} must be a positive whole number of voxels "
                        f"(default {DEFAULT_MAX_VALUES}); fix or unset it")
    return limit


def read_volume(path: Path, spatial_dims: int) -> Volume:
    """Read ``path`` as a ``spatial_dims``-D image; raise ReadError with a reason otherwise."""
    if not path.is_file():
        raise ReadError("file does not exist")
    if not is_supported(path):
        raise ReadError(f"unsupported format; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    try:
        if path.name.lower().endswith(NIFTI_SUFFIXES):
            volume = _read_nifti(path)
        elif path.name.lower().endswith(NRRD_SUFFIXES):
            from fedseg.data.dicom.labels import read_nrrd  # pynrrd; the DICOM package reads NRRD labels too

            volume = read_nrrd(path)
        else:
            volume = _read_2d(path)
    except (ReadError, UserError):
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own limit, checked as the file opens
        raise ReadError(f"too large to read safely ({exc}); crop or downsample the image") from exc
    except Exception as exc:  # nibabel/Pillow/zlib raise many types for corrupt files
        raise ReadError(f"unreadable or corrupt ({type(exc).__name__}: {exc})") from exc
    if volume.array.dtype.kind not in "biuf":
        raise ReadError(f"holds {volume.array.dtype} values; store real numbers (integers or floats), "
                        "e.g. the magnitude of a complex image")
    if volume.array.size == 0:
        raise ReadError(f"holds no voxels (shape {volume.array.shape[1:]}); remove or replace the file")
    if not np.isfinite(volume.affine).all():
        raise ReadError("has NaN or infinite values in its affine (header); fix the header")
    volume = _as_dims(volume, spatial_dims)
    axes = volume.affine[:spatial_dims, :spatial_dims]
    if min(volume.spacing) <= 0 or abs(np.linalg.det(axes)) <= 1e-9 * math.prod(volume.spacing):
        raise ReadError(f"has a singular affine (voxel spacing {', '.join(f'{v:g}' for v in volume.spacing)}; "
                        "axes must be independent, spacings above 0): fix the header's sform/qform")
    return volume


def _check_size(shape: tuple[int, ...]) -> None:
    """Refuse a file whose header declares more values than ``max_values()``, before reading them."""
    values, limit = math.prod(int(n) for n in shape), max_values()
    if values > limit:
        raise ReadError(f"declares {' x '.join(str(int(n)) for n in shape)} = {values:,} values, over the "
                        f"limit of {limit:,}; crop or downsample it, or set {MAX_VALUES_ENV} to a larger "
                        "number of voxels if this machine has the memory (4 bytes each, several copies)")


def _check_nifti_offset(path: Path) -> None:
    """Refuse a NIfTI whose header puts its pixels far into the file: nibabel would read all the bytes
    before them as header extensions (a small .nii.gz can hold a gigabyte of them)."""
    with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as handle:
        head = handle.read(176)
    for order in "<>":  # NIfTI-1 (348-byte header, float32 vox_offset) or NIfTI-2 (540, int64)
        size = struct.unpack(f"{order}i", head[:4])[0] if len(head) >= 4 else None
        if size in (348, 540) and len(head) >= (112 if size == 348 else 176):
            offset = struct.unpack(f"{order}f", head[108:112])[0] if size == 348 else \
                struct.unpack(f"{order}q", head[168:176])[0]
            if not offset <= MAX_NIFTI_OFFSET:  # NaN too
                raise ReadError(f"its header puts the pixel data {offset:,.0f} bytes into the file (header "
                                f"extensions), over the {MAX_NIFTI_OFFSET:,} read; save it again without "
                                "extensions (nibabel: image.header.extensions.clear())")
            return


def _read_nifti(path: Path) -> Volume:
    _check_nifti_offset(path)
    image = nib.load(str(path))
    _check_size(image.shape)
    data = np.asarray(image.dataobj)
    colour = data.dtype.names is not None
    if colour:  # nibabel's RGB24 / RGBA32: a structured dtype with fields R, G, B (, A)
        if set(data.dtype.names) - {"A"} != {"R", "G", "B"} or data.ndim > 3:
            raise ReadError(f"holds {data.ndim}D records with fields {data.dtype.names}; store plain "
                            "numbers, or a colour (RGB24) image as a 2D or 3D volume")
        data = np.stack([data[c] for c in "RGB"])  # channels first, alpha dropped
    elif data.ndim == 4:  # channels stored last, as NIfTI does
        data = np.moveaxis(data, -1, 0)
    else:
        data = data[None]
    return Volume(data, np.asarray(image.affine, dtype=np.float64), colour)


def _read_2d(path: Path) -> Volume:
    with warnings.catch_warnings():  # Pillow warns on large images; the size check below decides
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(path)
    with image:
        frames = getattr(image, "n_frames", 1)
        if frames > 1:  # e.g. a multi-page TIFF stack: reading page 1 alone would lose data silently
            raise ReadError(f"has {frames} frames/pages; a 2D image file must hold one image: save each "
                            "slice as its own file, or the stack as a 3D NIfTI")
        _check_size((*image.size[::-1], len(image.getbands())))
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
    return Volume(np.ascontiguousarray(data), np.eye(3), colour=data.shape[0] > 1)


def _as_dims(volume: Volume, spatial_dims: int) -> Volume:
    spatial = volume.array.shape[1:]
    if len(spatial) == spatial_dims:
        if volume.affine.shape != (spatial_dims + 1, spatial_dims + 1):  # a 2D NIfTI: 4x4 affine
            affine = np.eye(spatial_dims + 1)
            affine[:spatial_dims, :spatial_dims] = volume.affine[:spatial_dims, :spatial_dims]
            affine[:spatial_dims, -1] = volume.affine[:spatial_dims, -1]
            return Volume(volume.array, affine, volume.colour)
        return volume
    if spatial_dims == 2 and len(spatial) == 3 and spatial[2] == 1:
        affine = np.eye(3)
        affine[:2, :2] = volume.affine[:2, :2]
        affine[:2, 2] = volume.affine[:2, 3]
        return Volume(volume.array[..., 0], affine, volume.colour)
    raise ReadError(
        f"has {len(spatial)} spatial dimensions {tuple(spatial)} but the task is {spatial_dims}D; "
        "set task.spatial_dims to match the data"
    )
