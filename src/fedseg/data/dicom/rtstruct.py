"""An RTSTRUCT's ROIs as a label map on the series' grid, ROIs mapped to the task's classes by name.

Each closed planar contour (patient coordinates, mm) lies on a slice of the series: its points are
taken to index space with the series' grid, it must lie within half a slice of one slice, and is
filled there with Pillow, its vertices rounded to the nearest pixel first (Pillow would floor them)
as rt-utils does before its OpenCV fill: the pixels whose centre is inside, boundary pixels included.
Several contours of one ROI on one slice combine by even-odd (a contour inside another is a hole).
Where ROIs of different classes overlap, the larger stored value wins. Only declared classes must
have contours; POINT and OPEN contours of an ROI are refused.
An RTSTRUCT must be drawn on the case's series: its referenced series is that series, or (without a
series reference) its frame of reference is the series'. A frame of reference UID that differs while
the series reference matches is accepted: rt-utils writes a new one into every structure set.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pydicom.multival import MultiValue

from fedseg.data.dicom.geometry import Series
from fedseg.data.dicom.pixels import read_dicom, unreadable
from fedseg.data.dicom.seg import check_references, declared, on_series_grid
from fedseg.data.errors import Problem
from fedseg.data.task import name_key
from fedseg.errors import printable

MAX_POINTS = 10_000_000
"""Contour points one RTSTRUCT may hold (a dense whole-body structure set has about a million)."""


def read_rtstruct(path: Path, series: Series, names: Mapping[str, int], problems: list[Problem]) -> np.ndarray | None:
    """The RTSTRUCT's ROIs as the task's stored values on ``series``' grid; None with problems otherwise."""
    before = len(problems)
    try:
        ds = read_dicom(path)
        rois = {int(item.ROINumber): str(item.ROIName) for item in ds.get("StructureSetROISequence", [])}
        contours = {int(item.ReferencedROINumber): list(item.get("ContourSequence", []))
                    for item in ds.get("ROIContourSequence", [])}
    except Exception as exc:  # noqa: BLE001 -- pydicom raises many types for damaged files
        problems.append(Problem(path, unreadable(exc)))
        return None
    check_references(path, ds, series, problems)
    _check_frames(path, ds, series, problems)
    declared(path, rois.values(), names, problems, "ROI")
    if len(problems) > before:
        return None
    shape = series.spatial_shape if len(series.spatial_shape) == 3 else (*series.spatial_shape[::-1], 1)
    to_index = np.linalg.inv(_lps_index_affine(series))
    label = np.zeros(shape[::-1], dtype=np.int64)  # (slices, rows, columns) while drawing
    for number, name in sorted(rois.items(), key=lambda item: names[name_key(item[1])]):
        mask = _roi_mask(path, name, contours.get(number, []), to_index, shape, problems)
        if mask is not None:
            label[mask] = names[name_key(name)]
    return None if len(problems) > before else on_series_grid(label, series)


def _lps_index_affine(series: Series) -> np.ndarray:
    """Index (column, row, slice) -> LPS mm, also for a 2D image (its plane, one slice thick)."""
    affine = np.eye(4)
    spacing = list(series.spacing)
    directions = np.asarray(series.directions, dtype=float)
    if len(spacing) == 2:  # a 2D case is indexed (row, column): back to (column, row) for drawing
        spacing = [spacing[1], spacing[0], 1.0]
        directions = np.column_stack([directions[:, 1], directions[:, 0], np.cross(directions[:, 1], directions[:, 0])])
    affine[:3, :3] = directions[:, :3] * np.asarray(spacing)
    affine[:3, 3] = np.asarray(series.origin, dtype=float)[:3]
    return affine


def _roi_mask(path: Path, name: str, contours: list, to_index: np.ndarray, shape: tuple[int, ...],
              problems: list[Problem]) -> np.ndarray | None:
    columns, rows, slices = shape
    layers: dict[int, Image.Image] = {}
    where = f"ROI {printable(name)!r}"
    if not contours:
        problems.append(Problem(path, f"{where} has no contours: draw it, or leave the class out of this case's file"))
        return None
    points_total = 0
    for contour in contours:
        kind = str(contour.get("ContourGeometricType", ""))
        data = contour.get("ContourData", None)
        data = [] if data is None else list(data) if isinstance(data, (list, tuple, MultiValue)) else [data]
        points_total += len(data) // 3
        if kind != "CLOSED_PLANAR" or len(data) < 9 or len(data) % 3 or points_total > MAX_POINTS:
            problems.append(Problem(path, f"{where} has a {printable(kind)[:20] or 'untyped'} contour of {len(data) // 3} "
                                          "point(s): a class needs CLOSED_PLANAR contours of at least 3 points "
                                          f"(at most {MAX_POINTS:,} in all)"))
            return None
        try:
            points = np.asarray(data, dtype=float).reshape(-1, 3)
        except (TypeError, ValueError):
            problems.append(Problem(path, f"{where} has a contour whose ContourData are not all numbers: export it again"))
            return None
        index = (to_index @ np.column_stack([points, np.ones(len(points))]).T)[:3].T
        k = float(np.mean(index[:, 2]))
        if not np.isfinite(index).all() or abs(k - round(k)) > 0.5 or np.ptp(index[:, 2]) > 0.5 \
                or not 0 <= round(k) < slices:
            problems.append(Problem(path, f"{where} has a contour at {np.round(points[0], 2).tolist()} mm that lies on "
                                          "no slice of the case's series (within half a slice): it was drawn on "
                                          "another series or grid; export it again on this series"))
            return None
        layer = Image.new("1", (columns, rows), 0)
        if np.abs(index[:, :2]).max() > 2**20:  # Pillow's coordinates are C ints
            problems.append(Problem(path, f"{where} has a contour point {np.round(points[0], 2).tolist()} mm, over a "
                                          "million pixels off the image: export it again on this series"))
            return None
        vertices = np.round(index[:, :2])  # Pillow would floor the coordinates; rounded as rt-utils does
        ImageDraw.Draw(layer).polygon([(int(x), int(y)) for x, y in vertices], fill=1, outline=1)
        slice_index = int(round(k))
        if slice_index in layers:  # even-odd: a second contour on the slice cuts a hole (or adds an island)
            layer = Image.fromarray(np.asarray(layers[slice_index]) ^ np.asarray(layer))
        layers[slice_index] = layer
    mask = np.zeros((slices, rows, columns), dtype=bool)
    for slice_index, layer in layers.items():
        mask[slice_index] = np.asarray(layer, dtype=bool)
    return mask


def _check_frames(path: Path, ds, series: Series, problems: list[Problem]) -> None:
    """The frame of reference and series the RTSTRUCT's contours are drawn on, against the case's series."""
    frames, referenced = set(), set()
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        frames.add(str(frame.get("FrameOfReferenceUID", "")))
        for study in frame.get("RTReferencedStudySequence", []):
            referenced |= {str(s.get("SeriesInstanceUID", "")) for s in study.get("RTReferencedSeriesSequence", [])}
    if referenced and series.series_uid in referenced:
        return  # drawn on this series by its own reference; rt-utils writes a new frame of reference UID
    if frames and series.frame_of_reference_uid and series.frame_of_reference_uid not in frames:
        problems.append(Problem(path, f"its contours are in frame of reference {printable(', '.join(sorted(frames)))[:80]}, "
                                      f"not the series' ({series.frame_of_reference_uid}): they belong to another "
                                      "series; export the structure set again on this series"))
    elif referenced and series.series_uid not in referenced:
        problems.append(Problem(path, f"is drawn on series {printable(', '.join(sorted(referenced)))[:80]}, not the "
                                      f"case's series {series.series_uid}: put it in that series' case folder"))
