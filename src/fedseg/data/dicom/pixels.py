"""One DICOM image file of a series: its header values read defensively, and its pixels decoded into
float32 with the rescale slope/intercept applied.

Files are untrusted: every header value is checked for type, count and range before use, and every
failure is a Problem naming the file and the fix. Uncompressed little-endian pixel data (the common
case for a PACS export) is taken with ``numpy.frombuffer`` from the bytes already read; any other
transfer syntax goes through pydicom's pixel decoders, after checking that an installed plugin
decodes it. Multi-frame objects (NumberOfFrames > 1, e.g. Enhanced CT/MR) are refused with a message
saying how to convert them: a case is one single-frame file per slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from fedseg.data.errors import Problem
from fedseg.errors import printable

RAW_LITTLE_ENDIAN = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian})
"""Transfer syntaxes whose PixelData, once pydicom has read the file, is the raw little-endian pixels."""
NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "RTIMAGE", "SR", "PR", "KO",
                                  "REG", "DOC", "FID", "PLAN", "AU", "ECG", "HD", "RWV"})
MAX_SIDE = 2**16 - 1  # Rows and Columns are 16-bit in DICOM
EXPORT_FIX = ("export the series again uncompressed from the PACS or viewer, or convert it with "
              "`gdcmconv --raw IN OUT` (GDCM) or `dcmdjpeg`/`dcmdrle` (DCMTK)")


@dataclass
class Slice:
    """The header values of one single-frame image file that assembling a series needs."""

    path: Path
    dataset: Dataset
    rows: int
    columns: int
    position: np.ndarray | None
    """ImagePositionPatient (LPS mm), None when absent or invalid."""
    orientation: np.ndarray | None
    """ImageOrientationPatient: row direction then column direction (6 values), None when invalid."""
    pixel_spacing: tuple[float, float] | None
    """PixelSpacing: (between rows, between columns) in mm, None when absent or invalid."""
    slope: float
    intercept: float

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.get("SOPInstanceUID", ""))


def read_slice(path: Path, problems: list[Problem]) -> Slice | None:
    """Read ``path`` (header and pixel bytes, once) and check what a slice must have; None with a problem."""
    try:
        ds = read_dicom(path)
    except Exception as exc:  # InvalidDicomError, EOFError, struct errors ... from a hostile file
        problems.append(Problem(path, unreadable(exc)))
        return None
    where = len(problems)
    modality = text(ds, "Modality")
    if modality in NON_IMAGE_MODALITIES:
        problems.append(Problem(path, f"wrong modality: a {modality} object is not an image; the series must be "
                                      "the case's images (CT, MR, ...): move it out, or give it as the label"))
        return None
    if "PixelData" not in ds:
        other = next((k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds), None)
        problems.append(Problem(path, f"no pixel data{f' (it has {other}, not supported)' if other else ''}: "
                                      f"not an image (Modality {modality or 'missing'}), or a file truncated before "
                                      "its pixels; move it out of the series, or copy it again from its source"))
        return None
    frames = integer(ds, "NumberOfFrames", 1)
    if frames != 1:
        problems.append(Problem(path, f"a multi-frame image (NumberOfFrames {shown(ds, 'NumberOfFrames')}); "
                                      "fedseg reads series of single-frame images: convert it to one file per "
                                      "slice (e.g. dcm4che's `emf2sf`) and put those in the case folder"))
        return None
    rows, columns = integer(ds, "Rows", 0), integer(ds, "Columns", 0)
    if not (0 < rows <= MAX_SIDE and 0 < columns <= MAX_SIDE):
        problems.append(Problem(path, f"Rows {shown(ds, 'Rows')} / Columns {shown(ds, 'Columns')} missing "
                                      "or invalid: the header is damaged; export the series again"))
    samples, bits = integer(ds, "SamplesPerPixel", 1), integer(ds, "BitsAllocated", 0)
    if samples != 1:
        problems.append(Problem(path, f"SamplesPerPixel {shown(ds, 'SamplesPerPixel')} (3: a colour image): "
                                      "fedseg reads greyscale series (one sample per pixel)"))
    if bits not in (8, 16, 32):
        problems.append(Problem(path, f"BitsAllocated {shown(ds, 'BitsAllocated')} not supported (8, 16 or 32): "
                                      "the header is damaged or the image is not a greyscale image"))
    slope, intercept = real(ds, "RescaleSlope", 1.0), real(ds, "RescaleIntercept", 0.0)
    if slope is None or intercept is None or slope == 0 or max(abs(slope), abs(intercept)) > 1e30:
        problems.append(Problem(path, f"RescaleSlope {shown(ds, 'RescaleSlope')} / RescaleIntercept "
                                      f"{shown(ds, 'RescaleIntercept')} invalid (must be finite, slope not 0): "
                                      "fix the header"))
    if len(problems) > where:
        return None
    spacing = reals(ds, "PixelSpacing", 2)
    return Slice(path, ds, rows, columns, reals(ds, "ImagePositionPatient", 3),
                 reals(ds, "ImageOrientationPatient", 6), (spacing[0], spacing[1]) if spacing is not None else None,
                 slope, intercept)


def decode_into(item: Slice, out: np.ndarray, problems: list[Problem]) -> bool:
    """Write the slice's rescaled pixels into ``out`` (float32, shape (rows, columns)); False with a problem."""
    ds, path = item.dataset, item.path
    syntax = UID(str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or ""))
    try:
        if syntax in RAW_LITTLE_ENDIAN:
            pixels = _raw(item, problems)
        else:
            if not syntax or not syntax.is_transfer_syntax:
                problems.append(Problem(path, f"unknown transfer syntax {syntax or '(none)'!s:.70}: the file meta "
                                              f"header is damaged; {EXPORT_FIX}"))
                return False
            decoder = get_decoder(syntax)
            if not decoder.is_available:
                problems.append(Problem(path, f"pixel data compressed as {syntax.name} ({syntax}), which no installed "
                                              f"decoder reads: {EXPORT_FIX}, or install a pydicom plugin that "
                                              f"decodes it ({'; '.join(decoder.missing_dependencies)})"))
                return False
            pixels = ds.pixel_array
        if pixels is None:
            return False
        if pixels.shape != out.shape:
            problems.append(Problem(path, f"pixel data of shape {pixels.shape}, the header says {out.shape}: the "
                                          "file is damaged; export it again"))
            return False
        out[...] = pixels
    except Exception as exc:  # a decoder's error on an invalid compressed stream
        problems.append(Problem(path, f"pixel data ({syntax.name} {syntax}) cannot be "
                                      f"decoded ({type(exc).__name__}: {str(exc)[:200]}): the file is damaged or "
                                      f"its compression not supported; {EXPORT_FIX}"))
        return False
    if item.slope != 1.0:
        out *= np.float32(item.slope)
    if item.intercept != 0.0:
        out += np.float32(item.intercept)
    return True


def _raw(item: Slice, problems: list[Problem]) -> np.ndarray | None:
    """Uncompressed little-endian pixels as a read-only view of the bytes pydicom read."""
    ds = item.dataset
    bits, signed = int(ds.BitsAllocated), integer(ds, "PixelRepresentation", 0) == 1
    stored = integer(ds, "BitsStored", bits)
    data = ds.PixelData
    count, size = item.rows * item.columns, bits // 8
    if not isinstance(data, bytes) or len(data) < count * size:
        problems.append(Problem(item.path, f"truncated: its pixel data holds {len(data) if isinstance(data, bytes) else 0:,} "
                                           f"bytes, {item.rows} x {item.columns} pixels of {bits} bits need "
                                           f"{count * size:,}: copy the file again from its source (PACS export)"))
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{size}")
    pixels = np.frombuffer(data, dtype=dtype, count=count).reshape(item.rows, item.columns)
    if 0 < stored < bits:  # bits above BitsStored are not part of the value: mask, or sign-extend
        shift = bits - stored
        pixels = (pixels << shift) >> shift if signed else pixels & dtype.type((1 << stored) - 1)
    return pixels


class TruncatedFile(Exception):
    """The file ends inside a value its header declares."""


class _Strict:
    """A binary file whose reads raise TruncatedFile when the file ends inside what was asked for (pydicom
    itself keeps the elements read so far and drops the rest: a truncated file would look complete). A
    read of 8 bytes, the next element's header, may find the file's end."""

    def __init__(self, handle):
        self._handle = handle

    def read(self, size: int | None = -1) -> bytes:
        data = self._handle.read(size)
        if size is not None and size > 0 and len(data) < size and (data or size != 8):
            raise TruncatedFile(f"it ends {size - len(data):,} bytes short of a value at byte {self._handle.tell():,}")
        return data

    def __getattr__(self, name: str):
        return getattr(self._handle, name)


def read_dicom(path: Path, **options) -> Dataset:
    """``pydicom.dcmread`` (force=False) that raises TruncatedFile for a file cut short."""
    with open(path, "rb") as handle:
        return pydicom.dcmread(_Strict(handle), force=False, **options)


def unreadable(exc: Exception) -> str:
    """Why a file could not be read as DICOM, and what to do."""
    if isinstance(exc, TruncatedFile):
        return (f"truncated: {exc}: copy the file again from its source (PACS export), or move it out of the case "
                "folder if it is not a DICOM file")
    if isinstance(exc, pydicom.errors.InvalidDicomError):
        return ("not a DICOM file (no 'DICM' marker after its 128-byte preamble): move it out of the case folder "
                "(a DICOM file without the preamble: save it again as a DICOM file, e.g. `dcmconv` or pydicom's "
                "save_as(enforce_file_format=True))")
    if isinstance(exc, (EOFError, OSError)) or "end of file" in str(exc).lower():
        return (f"truncated or unreadable ({type(exc).__name__}: {str(exc)[:200]}): copy the file again from its "
                "source (PACS export), or move it out of the case folder")
    return (f"a damaged DICOM file ({type(exc).__name__}: {str(exc)[:200]}): export it again from its source, or "
            "move it out of the case folder")


def shown(ds: Dataset, keyword: str) -> str:
    """A header value as a message shows it (short; 'invalid' when pydicom cannot even convert it)."""
    try:
        return printable(str(ds.get(keyword, "missing")))[:40]
    except Exception:
        return "(invalid)"


def text(ds: Dataset, keyword: str) -> str:
    """A header string, '' when absent or not a string."""
    try:
        value = ds.get(keyword)
        return str(value).strip() if isinstance(value, str) else ""
    except Exception:
        return ""


def integer(ds: Dataset, keyword: str, default: int) -> int:
    """A header integer; ``default`` when absent, -1 when invalid."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return default
        number = int(value)
        return number if number == float(value) else -1
    except Exception:
        return -1


def real(ds: Dataset, keyword: str, default: float) -> float | None:
    """A finite header number; ``default`` when absent, None when invalid."""
    try:
        absent = keyword not in ds or ds.get(keyword) in (None, "")
    except Exception:
        return None
    values = [default] if absent else reals(ds, keyword, 1)
    return values[0] if values is not None else None


def reals(ds: Dataset, keyword: str, count: int) -> np.ndarray | None:
    """``count`` finite header numbers, None when absent, of another count, or not finite numbers."""
    try:
        value = ds.get(keyword)
        if value is None:
            return None
        items = list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
        if len(items) != count:
            return None
        numbers = np.array([float(v) for v in items], dtype=np.float64)
        return numbers if all(math.isfinite(v) for v in numbers) else None
    except Exception:
        return None
