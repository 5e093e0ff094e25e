"""Write a volume as a DICOM image series: NIfTI data made into the DICOM a hospital's PACS holds.

For users who have NIfTI data and want to try a DICOM site or a PACS, and for the tests that check a
DICOM site trains exactly like its NIfTI original (``examples/make_dicom_site.py``). One file per
slice (MR or CT Image Storage, Explicit VR Little Endian), slices along the volume's third axis, the
geometry taken from the affine (RAS -> DICOM's LPS); integer volumes that fit 16 bits are stored as
they are, others with a rescale slope/intercept (lossy: 16-bit steps). UIDs derive from ``key`` so
that a conversion is reproducible.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from fedseg.data.dicom.geometry import LPS_TO_RAS, Series
from fedseg.data.errors import DataError
from fedseg.data.loading import load_case
from fedseg.data.readers import Volume
from fedseg.data.site import discover_cases
from fedseg.data.task import Task

SOP_CLASSES = {"MR": "1.2.840.10008.5.1.4.1.1.4", "CT": "1.2.840.10008.5.1.4.1.1.2"}
UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's root; derived UIDs are its documented use


def uid(key: str) -> str:
    """A valid DICOM UID derived from ``key`` (the same key gives the same UID)."""
    return generate_uid(UID_PREFIX, entropy_srcs=[key])


def write_series(volume: Volume, folder: Path, key: str, *, modality: str = "MR", patient_id: str = "ANON",
                 description: str = "fedseg export") -> Series:
    """``volume`` (``[1, X, Y, Z]``, RAS affine) as one DICOM file per slice in ``folder``; the series
    as ``read_series`` would give it back."""
    if modality not in SOP_CLASSES:
        raise ValueError(f"modality must be one of {sorted(SOP_CLASSES)}, got {modality!r}")
    array, lps = volume.array, LPS_TO_RAS @ volume.affine  # LPS_TO_RAS is its own inverse
    if array.ndim != 4 or array.shape[0] != 1:
        raise ValueError(f"a series is written from one channel of a 3D volume, got shape {array.shape}")
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    axes = lps[:3, :3] / spacing
    pixels, slope, intercept = _stored(array[0])
    folder.mkdir(parents=True, exist_ok=True)
    base = _base(key, modality, patient_id, description)
    base.PixelRepresentation = int(pixels.dtype == np.int16)
    paths = []
    for k in range(array.shape[3]):
        ds = Dataset()
        ds.update(base)
        ds.SOPInstanceUID = uid(f"{key}/image/{k}")
        ds.InstanceNumber = k + 1
        position = lps[:3, 3] + lps[:3, 2] * k
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*axes[:, 0], *axes[:, 1])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # between rows (Y), between columns (X)
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.SliceLocation = f"{float(position @ np.cross(axes[:, 0], axes[:, 1])):.6f}"
        ds.Rows, ds.Columns = array.shape[2], array.shape[1]
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{intercept:.10g}"
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()  # rows = Y, columns = X
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        path = folder / f"{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    back = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return Series(Volume(back[None], LPS_TO_RAS @ lps), tuple(paths), tuple(uid(f"{key}/image/{k}") for k in
                  range(array.shape[3])), base.SOPClassUID, base.StudyInstanceUID, base.SeriesInstanceUID,
                  base.FrameOfReferenceUID, modality, lps[:3, 3].copy(), axes, tuple(float(s) for s in spacing))


def export_case(image: Volume, label: np.ndarray, class_names: list[str], folder: Path, key: str, *,
                modality: str = "MR") -> Series:
    """A case as DICOM: ``folder/image/`` the series, ``folder/label.dcm`` its SEG (``label``: class
    indices, segment i named ``class_names[i - 1]``, a manual annotation)."""
    from fedseg.data.dicom.seg_writer import write_seg

    series = write_series(image, folder / "image", key, modality=modality)
    write_seg(label, series, class_names, folder / "label.dcm", algorithm_name="", algorithm_version="")
    return series


def export_site(site: Path, out: Path, task: Task, *, modality: str = "MR") -> int:
    """Every case of a NIfTI ``site`` (any layout or manifest) as ``out/dicom/<case>/``; the number of cases.
    DataError lists the site's problems."""
    cases = discover_cases(Path(site).name, Path(site))
    for case in cases:
        loaded, problems = load_case(case, task)
        if loaded is None:
            raise DataError(Path(site).name, problems)
        export_case(loaded.image, loaded.label, task.foreground_names, Path(out) / "dicom" / case.name,
                    f"{Path(site).name}/{case.name}", modality=modality)
    return len(cases)


def _stored(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """16-bit stored values and the rescale that gives ``array`` back (exactly for 16-bit integers)."""
    if np.issubdtype(array.dtype, np.integer) or np.array_equal(array, np.round(array)):
        low, high = float(array.min()), float(array.max())
        if low >= 0 and high <= 65535:
            return array.astype(np.uint16), 1.0, 0.0
        if low >= -32768 and high <= 32767:
            return array.astype(np.int16), 1.0, 0.0
    low, high = float(array.min()), float(array.max())
    slope = (high - low) / 65535 or 1.0
    return np.round((array - low) / slope).astype(np.uint16), slope, low


def _base(key: str, modality: str, patient_id: str, description: str) -> Dataset:
    """The attributes every slice shares (patient, study, series, frame of reference, pixel format)."""
    ds = Dataset()
    today = datetime.date(2000, 1, 1).strftime("%Y%m%d")  # fixed: a conversion is reproducible
    ds.SOPClassUID = SOP_CLASSES[modality]
    ds.Modality = modality
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = f"{patient_id}^", patient_id, "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid(f"{key}/study"), uid(f"{key}/series")
    ds.FrameOfReferenceUID = uid(f"{key}/frame")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "000000"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
    ds.SeriesNumber, ds.SeriesDescription = 1, description
    ds.Manufacturer, ds.PositionReferenceIndicator = "fedseg", ""
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    return ds
