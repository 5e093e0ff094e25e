"""A DICOM image series assembled into a volume (``read_series``), and the scan of a case folder
(``scan_folder``, in ``scan``).

Slices are ordered by ImagePositionPatient projected on the slice normal (the cross product of
ImageOrientationPatient's row and column directions), never by file name or InstanceNumber. The
grid is ITK's: array ``[1, X, Y, Z]`` (column, row, slice), origin the first slice's position,
directions (row direction, column direction, normal), spacing (PixelSpacing[1], PixelSpacing[0], the
mean distance between slices); the affine maps indices to RAS. A single-slice 3D series takes its
slice spacing from SliceThickness, else SpacingBetweenSlices. A 2D case is one single-frame image,
``[1, rows, columns]``, spaced by PixelSpacing (1 mm when absent), with no position or orientation.
Every problem (missing, duplicated or unevenly spaced slices, slices that disagree on their grid,
undecodable pixels ...) is a Problem naming the file(s) and the fix; the series is then None.
The array is float32 (rescale applied), Fortran-ordered: one file's pixels are one contiguous block.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from fedseg.data.dicom.geometry import LPS_TO_RAS, Series
from fedseg.data.dicom.pixels import Slice, decode_into, read_slice, real, shown, text
from fedseg.data.dicom.scan import FolderScan, scan_folder
from fedseg.data.errors import Problem
from fedseg.data.readers import MAX_VALUES_ENV, Volume, max_values

__all__ = ["FolderScan", "read_series", "scan_folder"]

GAP_FACTOR = 1.5
"""A distance between neighbouring slices over this many times the median spacing is missing slices."""
SPACING_TOLERANCE = 0.01
"""Relative difference of slice distances tolerated as even spacing (headers round positions)."""
ORIENTATION_TOLERANCE = 1e-4
POSITION_TOLERANCE = 0.05
"""Slices whose positions along the normal differ by less than this fraction of the spacing are duplicates;
in-plane offsets between slices above this fraction of a pixel are a sheared stack (gantry tilt)."""
SPACING_RANGE = (1e-4, 1e5)
"""Sizes in mm a pixel or a slice distance may have (a header outside it is damaged or hostile)."""


def read_series(files: list[Path] | tuple[Path, ...], spatial_dims: int, problems: list[Problem]) -> Series | None:
    """The series of ``files`` (one file per slice, any order) as a volume; None with problems otherwise."""
    files = [Path(f) for f in files]
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if not files:
        problems.append(Problem(Path("."), "an image series with no files"))
        return None
    if spatial_dims == 2 and len(files) != 1:
        problems.append(Problem(files[0].parent, f"a 2D case is one image file, this series has {len(files)}: "
                                                 "set task.spatial_dims = 3, or keep one image per case folder"))
        return None
    before = len(problems)
    slices = [s for s in (read_slice(f, problems) for f in files) if s is not None]
    if len(problems) > before or not slices:
        return None
    if not _same_series(slices, problems) or not _fits(slices, problems):
        return None
    if spatial_dims == 2:
        return _image_2d(slices[0], problems)
    return _volume_3d(slices, problems)


def _same_series(slices: list[Slice], problems: list[Problem]) -> bool:
    """The files are distinct instances of one series on one grid of rows x columns."""
    first, before = slices[0], len(problems)
    seen: dict[str, Path] = {}
    for item in slices:
        uid = item.sop_instance_uid
        if uid and uid in seen:
            problems.append(Problem(item.path, f"duplicated slice: the same SOPInstanceUID as {seen[uid].name}; "
                                               "delete one of the two copies"))
        seen.setdefault(uid, item.path)
        for keyword in ("SeriesInstanceUID", "FrameOfReferenceUID"):
            if text(item.dataset, keyword) != text(first.dataset, keyword):
                problems.append(Problem(item.path, f"another {keyword} than {first.path.name}: the files are not one "
                                                   "series; keep one series per case folder"))
        if (item.rows, item.columns) != (first.rows, first.columns):
            problems.append(Problem(item.path, f"{item.rows} x {item.columns} pixels, {first.path.name} has "
                                               f"{first.rows} x {first.columns}: slices of one series share their "
                                               "size; move the odd file out or export the series again"))
    return len(problems) == before


def _fits(slices: list[Slice], problems: list[Problem]) -> bool:
    """The series' declared size is within ``max_values()`` (checked before any pixel is decoded)."""
    first = slices[0]
    values, limit = first.rows * first.columns * len(slices), max_values()
    if values > limit:
        problems.append(Problem(first.path.parent, f"the series declares {first.columns} x {first.rows} x "
                                                   f"{len(slices)} = {values:,} voxels, over the limit of {limit:,}: "
                                                   f"crop or downsample it, or set {MAX_VALUES_ENV} higher if this "
                                                   "machine has the memory (4 bytes a voxel, several copies)"))
        return False
    return True


def _image_2d(item: Slice, problems: list[Problem]) -> Series | None:
    array = np.empty((1, item.rows, item.columns), np.float32)
    if not decode_into(item, array[0], problems):
        return None
    spacing = item.pixel_spacing or (1.0, 1.0)  # a picture (secondary capture, ...) may have no size
    if item.pixel_spacing is None and "PixelSpacing" in item.dataset or not _sizes(spacing):
        problems.append(Problem(item.path, f"PixelSpacing {shown(item.dataset, 'PixelSpacing')} is not two sizes in "
                                           f"mm within {SPACING_RANGE}: fix the header (or remove it)"))
        return None
    affine = np.diag([spacing[0], spacing[1], 1.0])
    return _series([item], Volume(array, affine), np.zeros(2), np.eye(2), (float(spacing[0]), float(spacing[1])))


def _volume_3d(slices: list[Slice], problems: list[Problem]) -> Series | None:
    axes = _grid(slices, problems)
    if axes is None:
        return None
    normal = axes[:, 2]
    depth = np.array([float(s.position @ normal) for s in slices])  # type: ignore[operator]
    order = np.argsort(depth, kind="stable")
    slices, depth = [slices[i] for i in order], depth[order]
    spacing_z = _slice_spacing(slices, depth, axes, problems)
    if spacing_z is None:
        return None
    first = slices[0]
    # One file's pixels are one contiguous (rows, columns) block; the transpose is ITK's [X, Y, Z] view.
    stack = np.empty((len(slices), first.rows, first.columns), np.float32)
    before = len(problems)
    for k, item in enumerate(slices):
        decode_into(item, stack[k], problems)
    if len(problems) > before:
        return None
    spacing = (float(first.pixel_spacing[1]), float(first.pixel_spacing[0]), spacing_z)  # type: ignore[index]
    origin = np.asarray(first.position, dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3], lps[:3, 3] = axes * np.asarray(spacing), origin
    volume = Volume(stack.transpose(2, 1, 0)[None], LPS_TO_RAS @ lps)
    return _series(slices, volume, origin, axes, spacing)


def _grid(slices: list[Slice], problems: list[Problem]) -> np.ndarray | None:
    """The unit row, column and normal directions (columns of a 3x3 matrix) every slice shares."""
    before = len(problems)
    for item in slices:
        missing = [name for name, value in (("ImagePositionPatient", item.position), ("ImageOrientationPatient",
                   item.orientation), ("PixelSpacing", item.pixel_spacing)) if value is None]
        if missing:
            problems.append(Problem(item.path, f"missing or invalid {', '.join(missing)} (geometry of a 3D slice): "
                                               "export the series again with its geometry, or set task.spatial_dims "
                                               "= 2 for single 2D images"))
        elif not _sizes(item.pixel_spacing):  # type: ignore[arg-type]
            problems.append(Problem(item.path, f"PixelSpacing {item.pixel_spacing} is not two sizes in mm within "
                                               f"{SPACING_RANGE}: fix the header"))
    if len(problems) > before:
        return None
    first = slices[0]
    row, column = first.orientation[:3], first.orientation[3:]  # type: ignore[index]
    if not (abs(np.linalg.norm(row) - 1) < 0.01 and abs(np.linalg.norm(column) - 1) < 0.01 and abs(row @ column) < 0.01):
        problems.append(Problem(first.path, f"ImageOrientationPatient {list(first.orientation)} is not two "  # type: ignore[arg-type]
                                            "perpendicular unit vectors: fix the header"))
        return None
    for item in slices[1:]:
        if np.max(np.abs(item.orientation - first.orientation)) > ORIENTATION_TOLERANCE:  # type: ignore[operator]
            problems.append(Problem(item.path, f"ImageOrientationPatient differs from {first.path.name}'s: the files "
                                               "are not one stack (a localizer or another orientation): move it out"))
        if max(abs(a - b) for a, b in zip(item.pixel_spacing, first.pixel_spacing)) > 1e-4 * max(first.pixel_spacing):  # type: ignore[arg-type]
            problems.append(Problem(item.path, f"PixelSpacing {item.pixel_spacing} differs from {first.path.name}'s "
                                               f"{first.pixel_spacing}: slices of one series share their pixel size; "
                                               "move the odd file out or export the series again"))
    if len(problems) > before:
        return None
    row, column = row / np.linalg.norm(row), column / np.linalg.norm(column)
    return np.stack([row, column, np.cross(row, column)], axis=1)


def _slice_spacing(slices: list[Slice], depth: np.ndarray, axes: np.ndarray, problems: list[Problem]) -> float | None:
    """The distance between slices (mean of the sorted positions), after checking duplicates, gaps, even
    spacing and that the stack is not sheared."""
    first = slices[0]
    if len(slices) == 1:
        for keyword in ("SliceThickness", "SpacingBetweenSlices"):
            value = _positive(real(first.dataset, keyword, 0.0))
            if value is not None:
                return value
        problems.append(Problem(first.path, "a single-slice 3D series without SliceThickness or SpacingBetweenSlices: "
                                            "add the slice thickness to the header, or set task.spatial_dims = 2"))
        return None
    steps = np.diff(depth)
    median = float(np.median(steps))
    pixel = min(first.pixel_spacing)  # type: ignore[arg-type]
    before = len(problems)
    for k in np.flatnonzero(steps <= POSITION_TOLERANCE * max(median, pixel)):
        problems.append(Problem(slices[k + 1].path, f"duplicated slice: at the same position as {slices[k].path.name} "
                                                    f"({depth[k]:.3f} mm along the normal): delete one of them"))
    if len(problems) > before:
        return None
    for k in np.flatnonzero(steps > GAP_FACTOR * median):
        problems.append(Problem(slices[k].path.parent, f"missing slices: a gap of {steps[k]:.3f} mm between "
                                                       f"{slices[k].path.name} ({depth[k]:.3f} mm along the normal) "
                                                       f"and {slices[k + 1].path.name} ({depth[k + 1]:.3f} mm), the "
                                                       f"other slices are {median:.3f} mm apart (about "
                                                       f"{round(steps[k] / median) - 1} missing): export the whole "
                                                       "series again"))
    even = steps[steps <= GAP_FACTOR * median]
    if len(problems) == before and even.max() - even.min() > SPACING_TOLERANCE * median:
        problems.append(Problem(first.path.parent, f"uneven slice spacing: slices are {even.min():.4f} to "
                                                   f"{even.max():.4f} mm apart (more than {SPACING_TOLERANCE:.0%}): "
                                                   "resample the series to even spacing, or export it again"))
    offsets = np.array([s.position for s in slices]) - first.position  # type: ignore[operator]
    shear = np.abs(offsets @ axes[:, :2]).max()
    if shear > POSITION_TOLERANCE * pixel + 1e-3:
        problems.append(Problem(first.path.parent, f"the slices are not stacked along their normal (shifted by up to "
                                                   f"{shear:.3f} mm in-plane: a gantry tilt or a sheared series): "
                                                   "resample it onto a regular grid, or export it again"))
    spacing = float((depth[-1] - depth[0]) / (len(slices) - 1))
    if len(problems) == before and not _sizes((spacing,)):
        problems.append(Problem(first.path.parent, f"slices {spacing:.3g} mm apart, outside {SPACING_RANGE}: the "
                                                   "positions in the headers are damaged; export the series again"))
    return None if len(problems) > before else spacing


def _positive(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and _sizes((number,)) else None


def _sizes(values) -> bool:
    return all(SPACING_RANGE[0] <= v <= SPACING_RANGE[1] for v in values)


def _series(slices: list[Slice], volume: Volume, origin: np.ndarray, directions: np.ndarray,
            spacing: tuple[float, ...]) -> Series:
    ds = slices[0].dataset
    return Series(volume, tuple(s.path for s in slices), tuple(s.sop_instance_uid for s in slices),
                  text(ds, "SOPClassUID"), text(ds, "StudyInstanceUID"), text(ds, "SeriesInstanceUID"),
                  text(ds, "FrameOfReferenceUID") or None, text(ds, "Modality"), origin, directions, spacing)
