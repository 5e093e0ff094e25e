"""A DICOM case's label file, whatever its kind, as the task's stored values on the series' grid.

DICOM SEG (``seg``), RTSTRUCT (``rtstruct``) or an NRRD label map: 3D Slicer's ``.seg.nrrd`` names
its segments in its header (``SegmentN_Name``, ``SegmentN_LabelValue``) and they are mapped by name
like SEG segments; a plain NRRD keeps its stored values (the task's, as a NIfTI label holds them).
An NRRD must lie on the series' grid (same size, spacing, orientation and origin, 1e-3 mm).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fedseg.data.case_files import AFFINE_TOLERANCE
from fedseg.data.dicom.geometry import LPS_TO_RAS, Series
from fedseg.data.dicom.pixels import read_dicom, unreadable
from fedseg.data.dicom.rtstruct import read_rtstruct
from fedseg.data.dicom.seg import declared, read_seg
from fedseg.data.errors import Problem
from fedseg.data.readers import NRRD_SUFFIXES, ReadError, Volume, max_values
from fedseg.data.task import name_key
from fedseg.errors import printable

SPACES = {"left-posterior-superior": np.eye(4), "LPS": np.eye(4), "right-anterior-superior": LPS_TO_RAS,
          "RAS": LPS_TO_RAS}
"""NRRD spaces fedseg reads, and the matrix that takes each to LPS."""
MAX_SEGMENTS = 10_000


def read_label(path: Path, series: Series, names: Mapping[str, int], problems: list[Problem]) -> np.ndarray | None:
    """The label in ``path`` on ``series``' grid, as stored values; None with problems otherwise."""
    if path.name.lower().endswith(NRRD_SUFFIXES):
        return _nrrd_label(path, series, names, problems)
    try:
        modality = str(read_dicom(path, stop_before_pixels=True).get("Modality", ""))
    except Exception as exc:  # noqa: BLE001 -- pydicom raises many types for damaged files
        problems.append(Problem(path, unreadable(exc)))
        return None
    if modality == "SEG":
        return read_seg(path, series, names, problems)
    if modality == "RTSTRUCT":
        return read_rtstruct(path, series, names, problems)
    problems.append(Problem(path, f"a label must be a DICOM SEG, an RTSTRUCT or an NRRD label map; this file's Modality "
                                  f"is {printable(modality)[:16]!r}: export the segmentation as one of those"))
    return None


def segment_names(path: Path) -> list[str]:
    """The segment or ROI names a label file declares, in its order; [] for a plain label map or an
    unreadable file (reading it reports why)."""
    try:
        if path.name.lower().endswith(NRRD_SUFFIXES):
            import nrrd

            return list(_slicer_segments(nrrd.read_header(str(path))).values())
        ds = read_dicom(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 -- the reader reports the file's problem
        return []
    items = ds.get("SegmentSequence", []) or ds.get("StructureSetROISequence", [])
    return [str(item.get("SegmentLabel", item.get("ROIName", ""))) for item in items][:MAX_SEGMENTS]


def read_nrrd(path: Path) -> Volume:
    """An NRRD file as a Volume (``[1, *sizes]`` in the file's axis order, affine index -> RAS); ReadError
    with the reason otherwise (size checked from the header before any data is read)."""
    import nrrd

    try:
        header = nrrd.read_header(str(path))
        sizes = [int(n) for n in header["sizes"]]
        if len(sizes) != 3:
            raise ReadError(f"has {len(sizes)} axes {sizes}: a label map is a 3D NRRD (3D Slicer: export the "
                            "segmentation as a labelmap, one layer)")
        if math.prod(sizes) > max_values():
            raise ReadError(f"declares {' x '.join(map(str, sizes))} voxels, over the limit of {max_values():,}")
        _check_data_files(path, header)
        space = str(header.get("space", ""))
        if space not in SPACES:
            raise ReadError(f"its space {printable(space)[:40]!r} is not one of {', '.join(sorted(SPACES))}: save it "
                            "in patient space (LPS or RAS)")
        affine = np.eye(4)
        affine[:3, :3] = np.asarray(header["space directions"], dtype=float).T
        affine[:3, 3] = np.asarray(header["space origin"], dtype=float)
        data, _ = nrrd.read(str(path), index_order="F")
    except ReadError:
        raise
    except Exception as exc:  # noqa: BLE001 -- pynrrd raises many types for damaged files
        raise ReadError(f"unreadable NRRD ({type(exc).__name__}: {printable(str(exc))[:200]})") from exc
    if not np.isfinite(affine).all():
        raise ReadError("has NaN or infinite space directions or origin; fix its header")
    return Volume(np.asarray(data)[None], LPS_TO_RAS @ SPACES[space] @ affine)


def data_files(path: Path, header: Mapping) -> list[Path]:
    """The data files a detached NRRD header (``.nhdr``) names, as paths from its folder; [] for a .nrrd."""
    names = header.get("data file") or header.get("datafile")
    if names is None:
        return []
    return [Path(path).parent / str(name) for name in ([names] if isinstance(names, str) else list(names)[:10_000])]


def _check_data_files(path: Path, header: Mapping) -> None:
    """A detached header may name data files only beside it: plain files in its own folder, not a pipe,
    a device or another case's data."""
    for data in data_files(path, header):
        if data.resolve().parent != Path(path).resolve().parent or not data.is_file():
            raise ReadError(f"its data file {printable(str(data))[-120:]!r} is not a plain file beside the header: keep "
                            "a detached NRRD's data file in the same folder (or save it as one .nrrd)")


def _nrrd_label(path: Path, series: Series, names: Mapping[str, int], problems: list[Problem]) -> np.ndarray | None:
    import nrrd

    try:
        volume = read_nrrd(path)
        segments = _slicer_segments(nrrd.read_header(str(path)))
    except ReadError as exc:
        problems.append(Problem(path, str(exc)))
        return None
    if volume.spatial_shape != series.spatial_shape or not np.allclose(volume.affine, series.volume.affine,
                                                                        atol=AFFINE_TOLERANCE):
        problems.append(Problem(path, f"is not on the series' grid (size {volume.spatial_shape} vs "
                                      f"{series.spatial_shape}, or spacing/orientation/origin differ): export the "
                                      "label map on the case's series (3D Slicer: reference volume = the series)"))
        return None
    data = volume.array[0]
    if not np.issubdtype(data.dtype, np.integer):
        problems.append(Problem(path, f"holds {data.dtype} values: a label map holds integers"))
        return None
    if not segments:
        return data.astype(np.int64)
    if not declared(path, segments.values(), names, problems):
        return None
    unnamed = sorted(set(np.unique(data).tolist()) - set(segments) - {0})
    if unnamed:
        problems.append(Problem(path, f"holds values {unnamed[:5]} that no segment of its header names"))
        return None
    lookup = np.zeros(int(max(segments)) + 1, dtype=np.int64)
    for value, name in segments.items():
        lookup[value] = names[name_key(name)]
    return lookup[data]


def _slicer_segments(header: Mapping) -> dict[int, str]:
    """3D Slicer's segments: stored value -> name (``SegmentN_LabelValue`` defaults to N + 1)."""
    found: dict[int, str] = {}
    for n in range(MAX_SEGMENTS):
        name = header.get(f"Segment{n}_Name")
        if name is None:
            break
        try:
            value = int(header.get(f"Segment{n}_LabelValue", n + 1))
        except ValueError:
            value = -1
        if 0 < value < 2**16:
            found[value] = str(name)
    return found
