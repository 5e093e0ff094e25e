"""``push(config, files)``: DICOM files (a prediction's SEG) stored on the site's PACS, by STOW-RS or
C-STORE; returns what the PACS stored and raises a PacsError naming each file it refused."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom
import requests
from pydicom.errors import InvalidDicomError

from fedseg.data.pacs.config import PacsConfig, PacsError, check_uid
from fedseg.data.pacs.pull import connect

MAX_FILES = 100_000
BATCH = 64
"""Files per STOW-RS request: bounded memory, few requests."""
WARNINGS = range(0xB000, 0xC000)


@dataclass(frozen=True)
class Stored:
    path: Path
    sop_instance_uid: str


@dataclass(frozen=True)
class PushSummary:
    address: str
    stored: tuple[Stored, ...]


def push(config: PacsConfig, files: list[Path], session: requests.Session | None = None) -> PushSummary:
    files = [Path(f) for f in files]
    if not files or len(files) > MAX_FILES:
        raise PacsError(f"give 1 to {MAX_FILES} DICOM files to push (got {len(files)})")
    headers = [_header(path) for path in files]
    pacs = connect(config, session)
    if config.dicomweb:
        refused: list[str] = []
        for start in range(0, len(files), BATCH):
            batch = files[start:start + BATCH]
            datasets = [pydicom.dcmread(path) for path in batch]
            answer = pacs.store(datasets)
            failed = {str(item.get("ReferencedSOPInstanceUID", "")) for item in answer.get("FailedSOPSequence", [])}
            refused += [str(p) for p, d in zip(batch, datasets) if str(d.SOPInstanceUID) in failed]
    else:
        statuses = pacs.store(files, [(h.SOPClassUID, h.file_meta.TransferSyntaxUID) for h in headers])
        refused = [f"{p} (status 0x{s:04X})" if isinstance(s, int) else f"{p} (no answer)"
                   for p, s in zip(files, statuses) if not (s == 0 or s in WARNINGS)]
    if refused:
        raise PacsError(f"the PACS at {config.address} refused {len(refused)} of {len(files)} file(s): "
                        f"{', '.join(refused[:5])}; see the PACS log for why")
    return PushSummary(config.address, tuple(Stored(p, str(h.SOPInstanceUID)) for p, h in zip(files, headers)))


def _header(path: Path) -> pydicom.Dataset:
    """The file's header, checked: a readable DICOM file with valid SOP class and instance UIDs."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError) as exc:
        raise PacsError(f"{path}: not a DICOM file that can be pushed ({type(exc).__name__}); give DICOM files "
                        "(e.g. the SEG files fedseg predict wrote)") from None
    check_uid(header.get("SOPInstanceUID"), f"{path}: SOPInstanceUID")
    check_uid(header.get("SOPClassUID"), f"{path}: SOPClassUID")
    if "TransferSyntaxUID" not in header.file_meta:
        raise PacsError(f"{path}: no file meta information (transfer syntax): write it as a DICOM file (Part 10)")
    return header
