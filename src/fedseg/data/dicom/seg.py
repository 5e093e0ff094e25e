"""A DICOM SEG as a label map on its series' grid, segments mapped to the task's classes by name.

highdicom decodes the frames and places them by the source images each frame refers to, in the
series' slice order (``get_pixels_by_source_instance``): a SEG whose frames do not say which image
they segment is refused with the fix, rather than placed by guessed positions. A fractional SEG is
thresholded at 0.5. Where segments of different classes overlap, the class with the larger stored
value wins (a tumour drawn inside its organ stays tumour when the tumour's value is larger).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from fedseg.data.dicom.geometry import Series
from fedseg.data.dicom.pixels import read_dicom, unreadable
from fedseg.data.errors import Problem
from fedseg.data.readers import max_values
from fedseg.data.task import name_key
from fedseg.errors import printable


def read_seg(path: Path, series: Series, names: Mapping[str, int], problems: list[Problem]) -> np.ndarray | None:
    """The SEG's segments as the task's stored values on ``series``' grid; None with problems otherwise."""
    import highdicom as hd

    before = len(problems)
    try:
        dataset = read_dicom(path, stop_before_pixels=True)
        frames = int(dataset.get("NumberOfFrames", 1) or 1) * int(dataset.Rows) * int(dataset.Columns)
    except Exception as exc:  # noqa: BLE001 -- pydicom raises many types for damaged files
        problems.append(Problem(path, unreadable(exc)))
        return None
    if frames > max_values():
        problems.append(Problem(path, f"the SEG declares {frames:,} values, over the limit of {max_values():,}; "
                                      "set FEDSEG_MAX_VOXELS if this machine has the memory"))
        return None
    check_references(path, dataset, series, problems)
    if len(problems) > before:
        return None
    try:
        seg = hd.seg.Segmentation.from_dataset(read_dicom(path), copy=False)
    except Exception as exc:  # noqa: BLE001 -- highdicom raises ValueError/AttributeError/KeyError on bad SEGs
        problems.append(Problem(path, f"not a readable DICOM SEG ({type(exc).__name__}: {printable(str(exc))[:200]}): "
                                      "export the segmentation again"))
        return None
    segments = {n: seg.get_segment_description(n).segment_label for n in seg.segment_numbers}
    if not declared(path, segments.values(), names, problems):
        return None
    referenced = {str(sop) for _, _, sop in seg.get_source_image_uids()}
    outside = referenced - set(series.sop_instance_uids)
    if outside:
        problems.append(Problem(path, f"the SEG refers to {len(outside)} image(s) not in the case's series "
                                      f"{series.series_uid} (e.g. {sorted(outside)[0]}): it segments another series; "
                                      "put it in that series' case folder"))
        return None
    try:
        pixels = seg.get_pixels_by_source_instance(list(series.sop_instance_uids), segment_numbers=list(segments),
                                                   rescale_fractional=True, skip_overlap_checks=True,
                                                   ignore_spatial_locations=True)
    except Exception as exc:  # noqa: BLE001
        problems.append(Problem(path, f"its frames cannot be placed on the series' images ({type(exc).__name__}: "
                                      f"{printable(str(exc))[:200]}): the SEG must name the source image of each "
                                      "frame (DerivationImageSequence), as dcmqi, 3D Slicer and highdicom write it"))
        return None
    label = np.zeros(pixels.shape[:3], dtype=np.int64)
    values = [names[name_key(name)] for name in segments.values()]  # pixels' last axis: segments in this order
    for i in sorted(range(len(values)), key=values.__getitem__):  # the larger value is painted last and wins
        label[pixels[..., i] > 0.5] = values[i]
    return on_series_grid(label, series)


def declared(path: Path, found: Iterable[str], names: Mapping[str, int], problems: list[Problem],
             kind: str = "segment") -> bool:
    """Whether every segment/ROI name ``found`` in ``path`` is a task class's; a problem listing the others."""
    undeclared = [name for name in found if name_key(name) not in names]
    if undeclared:
        more = f" and {len(undeclared) - 10} more" if len(undeclared) > 10 else ""
        shown = ", ".join(repr(printable(n)[:64]) for n in undeclared[:10]) + more
        problems.append(Problem(path, f"{kind}(s) {shown} not declared by "
                                      f"the task (its classes' names: {', '.join(sorted(names))}): add the name to "
                                      "the class in [task] labels or names (e.g. liver = [\"Liver\", \"Other name\"])"))
    return not undeclared


def on_series_grid(frames: np.ndarray, series: Series) -> np.ndarray:
    """``(slices, rows, columns)`` data in the series' indexing: ``(columns, rows, slices)`` for 3D,
    ``(rows, columns)`` for a 2D image."""
    if len(series.spatial_shape) == 2:
        return frames[0]
    return np.ascontiguousarray(frames.transpose(2, 1, 0))


def check_references(path: Path, ds, series: Series, problems: list[Problem]) -> None:
    """Study, frame of reference and referenced series of a SEG or RTSTRUCT against the case's series."""
    study = str(ds.get("StudyInstanceUID", ""))
    if study != series.study_uid:
        problems.append(Problem(path, f"belongs to study {printable(study)[:64]}, the case's series to study "
                                      f"{series.study_uid}: it labels another study; put it in that study's case folder"))
    frame = str(ds.get("FrameOfReferenceUID", "") or "")
    if frame and series.frame_of_reference_uid and frame != series.frame_of_reference_uid:
        problems.append(Problem(path, f"its frame of reference {printable(frame)[:64]} is not the series' "
                                      f"({series.frame_of_reference_uid}): its coordinates are not the images'; "
                                      "export the segmentation again on this series"))
    referenced = {str(item.get("SeriesInstanceUID", "")) for item in ds.get("ReferencedSeriesSequence", [])}
    if referenced and series.series_uid not in referenced:
        problems.append(Problem(path, f"refers to series {', '.join(sorted(printable(r)[:64] for r in referenced))}, "
                                      f"not the case's series {series.series_uid}: it labels another series; put it "
                                      "in that series' case folder"))
