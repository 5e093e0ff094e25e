"""What a DICOM case folder holds: its image series (by SeriesInstanceUID), its label candidates (DICOM
SEG and RTSTRUCT objects, NRRD label maps) and everything else, each as a Problem with the fix.

Only headers are read (pydicom, ``stop_before_pixels``; large values deferred), so a scan costs little
next to reading the series. Hidden files and folders (a leading '.') and DICOMDIR files are skipped; a
folder holding more than ``MAX_FILES`` files is refused before any is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import UID

from fedseg.data.dicom.labels import data_files
from fedseg.data.dicom.pixels import NON_IMAGE_MODALITIES, read_dicom, shown, text, unreadable
from fedseg.data.errors import Problem
from fedseg.data.readers import NRRD_SUFFIXES
from fedseg.errors import printable

LABEL_MODALITIES = frozenset({"SEG", "RTSTRUCT"})
MAX_FILES = 100_000
"""Files one case folder may hold (a 3000-slice series is large; more is a folder mistake)."""
DEFER = "64 KB"
"""Header values larger than this are not read during a scan."""


@dataclass
class FolderScan:
    """A case folder's contents, by kind."""

    series: dict[str, list[Path]] = field(default_factory=dict)
    """Image series: SeriesInstanceUID -> its image files (sorted by path; slice order comes later)."""
    labels: list[Path] = field(default_factory=list)
    """Label candidates: DICOM SEG and RTSTRUCT files, NRRD label maps (sorted by path)."""
    label_datasets: dict[Path, Dataset] = field(default_factory=dict)
    """The header (no pixel data) of each DICOM label candidate."""
    headers: dict[str, Dataset] = field(default_factory=dict)
    """SeriesInstanceUID -> the header of the series' first file (for descriptions)."""


def scan_folder(folder: Path, problems: list[Problem]) -> FolderScan:
    """Sort every file under ``folder`` (recursively) into image series, label candidates and problems."""
    scan = FolderScan()
    files = _files(Path(folder), problems)
    if files is None:
        return scan
    nrrd_data = _nrrd_data_files(files)
    for path in files:
        if path.name.upper() == "DICOMDIR" or path in nrrd_data:
            continue
        if path.name.lower().endswith(NRRD_SUFFIXES):
            scan.labels.append(path)
            continue
        try:
            ds = read_dicom(path, stop_before_pixels=True, defer_size=DEFER)
        except Exception as exc:  # hostile or foreign files raise many types
            problems.append(Problem(path, unreadable(exc)))
            continue
        modality = text(ds, "Modality")
        if modality in LABEL_MODALITIES:
            scan.labels.append(path)
            scan.label_datasets[path] = ds
        elif modality in NON_IMAGE_MODALITIES or not _is_image(ds):
            problems.append(Problem(path, f"not an image series nor a label (Modality {modality or 'missing'}, "
                                          f"{_sop_name(ds)}): move it out of the case folder"))
        else:
            uid = text(ds, "SeriesInstanceUID")
            if not uid:
                problems.append(Problem(path, "no SeriesInstanceUID: the header is damaged; export the series again"))
                continue
            scan.series.setdefault(uid, []).append(path)
            scan.headers.setdefault(uid, ds)
    if len(scan.series) > 1:
        problems.append(Problem(Path(folder), _mixed(scan)))
    return scan


def _files(folder: Path, problems: list[Problem]) -> list[Path] | None:
    """Every non-hidden file under ``folder``, sorted; None (with a problem) when there are too many."""
    if not folder.is_dir():
        problems.append(Problem(folder, "not a folder: a DICOM case is a folder of its series' files"))
        return None
    found: list[Path] = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        links = [d for d in dirs if not d.startswith(".") and os.path.islink(os.path.join(root, d))]
        problems.extend(Problem(Path(root) / d, "a link to a folder (not followed): copy the folder's files into "
                                                "the case folder or remove the link") for d in links)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in links)
        found.extend(Path(root) / n for n in names if not n.startswith("."))
        if len(found) > MAX_FILES:
            problems.append(Problem(folder, f"more than {MAX_FILES:,} files: a case folder holds one series and its "
                                            "label; split the folder into cases"))
            return None
    odd = [p for p in found if not p.is_file()]  # a fifo, a device, a broken or looping link
    problems.extend(Problem(p, "not a regular file (a broken or looping link, a device or a pipe): remove it "
                               "from the case folder") for p in sorted(odd))
    return sorted(p for p in found if p.is_file())


def _nrrd_data_files(files: list[Path]) -> set[Path]:
    """The data files that detached NRRD headers (.nhdr) in ``files`` point to (they are not problems)."""
    import nrrd

    data: set[Path] = set()
    for path in files:
        if path.name.lower().endswith(".nhdr"):
            try:
                data.update(data_files(path, nrrd.read_header(str(path))))
            except Exception:  # the label reader reports a damaged header
                continue
    return data


def _is_image(ds: Dataset) -> bool:
    """An object of an image storage SOP class (or of an unknown class that has image attributes)."""
    sop = UID(text(ds, "SOPClassUID"))
    name = sop.name if sop else ""
    if "Image Storage" in name:
        return True
    return (not name or name == sop) and "Rows" in ds and "Columns" in ds


def _sop_name(ds: Dataset) -> str:
    sop = UID(text(ds, "SOPClassUID"))
    return printable(sop.name)[:80] if sop else "no SOPClassUID"


def _mixed(scan: FolderScan) -> str:
    """The mixed-series problem: each series named, and the fix."""
    parts = []
    for uid, paths in scan.series.items():
        ds = scan.headers[uid]
        parts.append(f"'{printable(text(ds, 'SeriesDescription'))[:64] or 'no description'}' (SeriesNumber "
                     f"{shown(ds, 'SeriesNumber')}, UID {printable(uid)[:64]}, "
                     f"{len(paths)} file(s), e.g. {paths[0].name})")
    return (f"mixed series: {len(scan.series)} image series in one case folder: {'; '.join(parts)}; keep the one "
            "series the label refers to and move the others out (or give each series its own case folder)")
