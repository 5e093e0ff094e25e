"""The site's local copy of what was pulled: ``SITE/dicom/<case>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.

Every file is written under ``SITE/dicom/.pacs/tmp`` and renamed into place (``files.write_atomic``), so
a file in a case folder is always whole, also after a crash; a case whose every instance arrived is recorded in ``SITE/dicom/.pacs/<case>.json``
(with what was asked for: a changed request pulls again). The dot-folder is not a case to the site
reader. Every UID is checked before it becomes part of a path; every received dataset is checked to
belong to the study and series that were asked for."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from fedseg.data.pacs.config import Case, PacsError, PacsUnavailable, check_uid
from fedseg.files import write_atomic

RECORDS = ".pacs"


@dataclass(frozen=True)
class Instance:
    """One instance as the PACS listed it (every UID already checked)."""

    study: str
    series: str
    sop: str
    sop_class: str = ""


def instance(study: object, series: object, sop: object, sop_class: object, where: str) -> Instance:
    """An Instance from values a PACS sent, each checked as a UID (PacsError naming ``where``)."""
    return Instance(check_uid(study, f"{where}: StudyInstanceUID"), check_uid(series, f"{where}: SeriesInstanceUID"),
                    check_uid(sop, f"{where}: SOPInstanceUID"),
                    check_uid(sop_class, f"{where}: SOPClassUID") if sop_class not in (None, "") else "")


class SiteCache:
    """Where a site's pulled cases live, what is already there, and the one way a file gets there."""

    def __init__(self, site: Path):
        self.root = Path(site) / "dicom"
        self.records = self.root / RECORDS
        self.tmp = self.records / "tmp"
        if self.root.exists() and not self.root.is_dir():
            raise PacsError(f"{self.root} is a file: the site's dicom/ must be a folder")
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
            for leftover in self.tmp.iterdir():  # an interrupted write
                leftover.unlink(missing_ok=True)
        except OSError as exc:
            raise PacsUnavailable(f"cannot write the site's cache {self.root}: {exc.strerror or exc}; give a site "
                                  "folder this user may write") from None

    def path(self, case: Case, series: str, sop: str) -> Path:
        return (self.root / case.name / check_uid(series, f"case '{case.name}': SeriesInstanceUID")
                / f"{check_uid(sop, f'case {case.name!r}: SOPInstanceUID')}.dcm")

    def present(self, case: Case) -> set[tuple[str, str]]:
        """(series, sop) of the instances already in the case's folder."""
        folder = self.root / case.name
        if not folder.is_dir():
            return set()
        return {(d.name, f.name[:-4]) for d in folder.iterdir() if d.is_dir()
                for f in d.iterdir() if f.name.endswith(".dcm") and f.is_file()}

    def is_complete(self, case: Case) -> bool:
        try:
            record = json.loads((self.records / f"{case.name}.json").read_text())
        except (OSError, ValueError):
            return False
        return (isinstance(record, dict) and record.get("study") == case.study
                and record.get("series") == list(case.series) and isinstance(record.get("instances"), int)
                and len(self.present(case)) >= record["instances"])

    def mark_complete(self, case: Case, instances: int) -> None:
        record = {"study": case.study, "series": list(case.series), "instances": instances}
        self._write(self.records / f"{case.name}.json", json.dumps(record).encode())

    def forget(self, case: Case) -> None:
        (self.records / f"{case.name}.json").unlink(missing_ok=True)

    def accept(self, case: Case, data: bytes, series: set[str] | None, where: str) -> Instance:
        """Check one received DICOM file (``series``: the allowed series, None for any of the study) and
        store it; returns what it is. A file of another study or series is refused (PacsError)."""
        try:
            header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True,
                                     specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                                    "SOPClassUID"])
        except (InvalidDicomError, EOFError, ValueError, TypeError, OSError) as exc:
            raise PacsError(f"{where}: case '{case.name}': the PACS sent something that is not a DICOM file "
                            f"({type(exc).__name__}); check the PACS address") from None
        got = instance(header.get("StudyInstanceUID"), header.get("SeriesInstanceUID"), header.get("SOPInstanceUID"),
                       header.get("SOPClassUID"), f"{where}: case '{case.name}'")
        if got.study != case.study or (series is not None and got.series not in series):
            raise PacsError(f"{where}: case '{case.name}': the PACS sent instance {got.sop} of study {got.study}, "
                            f"series {got.series}, which was not asked for (study {case.study}); the PACS answers "
                            "queries wrongly: tell its administrator")
        self._write(self.path(case, got.series, got.sop), data)
        return got

    def _write(self, target: Path, data: bytes) -> None:
        try:
            write_atomic(target, lambda handle: handle.write(data), self.tmp)
        except OSError as exc:
            raise PacsUnavailable(f"cannot write {target}: {exc.strerror or exc} (disk full?)") from None
