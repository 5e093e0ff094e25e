"""One DICOM case: its image series and its label on the series grid, as ``data.loading`` takes them.

A case is a folder (``SITE/dicom/<case>/``, any file names, sub-folders allowed) holding the DICOM
files of one image series and one label for it: a DICOM SEG, an RTSTRUCT or an NRRD label map; or,
from a CSV manifest, a series folder and a label file. Segments and ROIs become the task's stored
label values through the classes' names (``Task.dicom_names``); an NRRD without segment names keeps
its stored values. Every problem is reported with the file it is in and the fix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedseg.data.case_files import Case
from fedseg.data.dicom.geometry import Series
from fedseg.data.dicom.labels import read_label, segment_names
from fedseg.data.dicom.scan import scan_folder
from fedseg.data.dicom.series import read_series
from fedseg.data.errors import Problem
from fedseg.data.readers import Volume
from fedseg.data.task import Task, name_key

LABEL_KINDS = "a DICOM SEG, an RTSTRUCT or an NRRD label map"


def read_dicom_case(case: Case, task: Task, problems: list[Problem],
                    declared: bool = True) -> tuple[Volume | None, Volume | None]:
    """The case's image and its label (stored values, the image's grid); None for what could not be read.

    ``declared=False`` (a site inspected without its classes): segments and ROIs get the values 1, 2, ...
    in the order their file lists them.
    """
    series, labels = read_folder_series(case.image, task.spatial_dims, problems)
    if case.label == case.image:  # a case folder: its label is in it
        if not labels:
            problems.append(Problem(case.image, f"no label for the case: put {LABEL_KINDS} of its series in the "
                                                "case's folder"))
        elif len(labels) > 1:
            problems.append(Problem(case.image, f"{len(labels)} labels ({', '.join(p.name for p in labels)}): keep "
                                                "one SEG, RTSTRUCT or NRRD per case folder (move the others out)"))
        label_path = labels[0] if len(labels) == 1 else None
    else:
        label_path = case.label
    if series is None or label_path is None:
        return (series.volume if series else None), None
    names = task.dicom_names if declared else _in_file_order(label_path)
    label = read_label(label_path, series, names, problems)
    if label is None:
        return series.volume, None
    return series.volume, Volume(np.asarray(label)[None], series.volume.affine)


def read_folder_series(folder: Path, spatial_dims: int, problems: list[Problem]) -> tuple[Series | None, list[Path]]:
    """The one image series of ``folder`` (None with problems: none, several, unreadable) and the
    label files beside it."""
    before = len(problems)
    scan = scan_folder(folder, problems)
    if len(scan.series) != 1:
        if not scan.series and len(problems) == before:
            problems.append(Problem(folder, "no DICOM image series in the folder: put the case's image files "
                                            "(CT, MR, ...) in it"))
        return None, list(scan.labels)  # several: scan_folder has explained the mixed series
    return read_series(next(iter(scan.series.values())), spatial_dims, problems), list(scan.labels)


def _in_file_order(path: Path) -> dict[str, int]:
    """Values 1, 2, ... for the segment/ROI names of ``path`` in its order (inspection without classes)."""
    return {name_key(name): i + 1 for i, name in enumerate(segment_names(path))}
