"""Small DICOM objects for the label tests: a series on the index grid, an RTSTRUCT drawn on it, square
contours; the shared real DICOM data (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from fedseg.data.dicom.export import write_series
from fedseg.data.readers import Volume

SHARED_DICOM = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom"
SHAPE = (10, 9, 4)


def shared(folder: str) -> Path:
    if not (SHARED_DICOM / folder).is_dir():
        pytest.skip(f"real DICOM data not available: {SHARED_DICOM / folder} (../shared/data/dicom)")
    return SHARED_DICOM / folder


def grid_series(folder: Path, key: str = "readers/a", shape=SHAPE):
    """A CT whose LPS grid is the index grid: (column, row, slice) -> (x, y, 2 * slice) mm."""
    array = (np.arange(np.prod(shape), dtype=np.float32).reshape(1, *shape) % 50)
    return write_series(Volume(array, np.diag([-1.0, -1.0, 2.0, 1.0])), folder, key, modality="CT")


def rtstruct(path: Path, series, contours, *, name: str = "Liver", kinds=None, frame=None, ref_series=None) -> Path:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.481.3", generate_uid()
    ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "RTSTRUCT", series.study_uid, generate_uid()
    ds.FrameOfReferenceUID = frame or series.frame_of_reference_uid
    ref = Dataset()
    ref.SeriesInstanceUID = ref_series or series.series_uid
    study = Dataset()
    study.RTReferencedSeriesSequence = Sequence([ref])
    ref_frame = Dataset()
    ref_frame.FrameOfReferenceUID = ds.FrameOfReferenceUID
    ref_frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref_frame])
    roi = Dataset()
    roi.ROINumber, roi.ROIName = 1, name
    ds.StructureSetROISequence = Sequence([roi])
    items = []
    for i, points in enumerate(contours):
        item = Dataset()
        item.ContourGeometricType = (kinds or ["CLOSED_PLANAR"] * len(contours))[i]
        item.NumberOfContourPoints = len(points) // 3
        item.ContourData = [f"{v:.6g}" if isinstance(v, float) else str(v) for v in points]
        items.append(item)
    roi_contour = Dataset()
    roi_contour.ReferencedROINumber, roi_contour.ContourSequence = 1, Sequence(items)
    ds.ROIContourSequence = Sequence([roi_contour])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def square(lo: float, hi: float, z: float) -> list[float]:
    return [lo, lo, z, hi, lo, z, hi, hi, z, lo, hi, z]
