"""Find a site's cases: a folder in one of the layouts below, or a CSV manifest.

- ``images/`` + ``labels/`` (or ``masks/``, as most public 2D sets come): files of the same case
  name pair up;
- ``imagesTr/`` + ``labelsTr/`` + ``dataset.json``: nnU-Net v2 / Decathlon (``data.nnunet``);
- ``dicom/`` with one folder per case (the case's name): the DICOM files of its image series (any
  names, sub-folders allowed) and its label: a DICOM SEG, an RTSTRUCT or an NRRD label map
  (``data.dicom.case``); as a PACS export or ``fedseg pacs pull`` writes it;
- a CSV manifest with a header ``image,label[,split]``; relative paths are relative to its folder
  (a DICOM case: ``image`` the series folder, ``label`` the SEG/RTSTRUCT/NRRD file).

A folder that could be read in two ways (``labels/`` and ``masks/``, or ``images/`` beside
``imagesTr/``) is a problem the user settles, not a guess.
"""

from __future__ import annotations

import csv
from pathlib import Path

from fedseg.data.case_files import SPLITS, Case, bad_name, files_by_case
from fedseg.data.errors import DataError, Problem
from fedseg.data.nnunet import FOLDERS as NNUNET_FOLDERS
from fedseg.data.nnunet import is_nnunet, nnunet_cases
from fedseg.data.readers import SUPPORTED_SUFFIXES, case_name

__all__ = ["SPLITS", "Case", "discover_cases"]
_EXTRA = "\0extra"  # DictReader key for values beyond the header's columns
LABEL_FOLDERS = ("labels", "masks")
DICOM_FOLDER = "dicom"


def discover_cases(site: str, path: Path) -> list[Case]:
    """All cases of a site, sorted by name; DataError lists every pairing problem."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        cases, problems = _from_manifest(path)
    elif path.is_dir():
        cases, problems = _from_folders(path)
    else:
        raise DataError(site, [Problem(path, "not found: give a folder with images/ and labels/, "
                                             "or a CSV manifest with columns image,label[,split]")])
    if not cases and not problems:
        problems.append(Problem(path, "the site has no cases: put image files in images/ and "
                                      f"label files of the same name in labels/ ({', '.join(SUPPORTED_SUFFIXES)})"))
    if problems:
        raise DataError(site, problems)
    return sorted(cases, key=lambda c: c.name)


def _from_folders(root: Path) -> tuple[list[Case], list[Problem]]:
    label_folders = [name for name in LABEL_FOLDERS if (root / name).is_dir()]
    if (root / DICOM_FOLDER).is_dir():
        other = [name for name in ("images", *label_folders, *NNUNET_FOLDERS) if (root / name).is_dir()]
        if other:
            return [], [Problem(root, f"holds both {DICOM_FOLDER}/ and {'/ and '.join(other)}/: keep one layout "
                                      "(move the other out)")]
        return _dicom_cases(root / DICOM_FOLDER)
    if is_nnunet(root):
        plain = [name for name in ("images", *label_folders) if (root / name).is_dir()]
        if plain:
            return [], [Problem(root, f"holds both {'/ and '.join(NNUNET_FOLDERS)}/ (nnU-Net layout) and "
                                      f"{'/ and '.join(plain)}/: keep one layout (move the other out)")]
        return nnunet_cases(root)
    if len(label_folders) > 1:
        return [], [Problem(root, "holds both labels/ and masks/: which are the labels? Keep one folder "
                                  "(move or rename the other)")]
    problems: list[Problem] = []
    folders = {}
    for kind in ("images", label_folders[0] if label_folders else "labels"):
        folder = root / kind
        if not folder.is_dir():
            problems.append(Problem(folder, "missing folder: a site folder needs images/ and labels/ (or masks/), "
                                            "or the nnU-Net layout imagesTr/ and labelsTr/"))
            continue
        folders[kind] = files_by_case(folder, problems)
    if len(folders) < 2:  # without both folders, every file would be reported as unpaired
        return [], problems
    (_, images), (kind, labels) = folders.items()
    for name in sorted(images.keys() - labels.keys()):
        problems.append(Problem(images[name], f"image without label: expected {root / kind / images[name].name}"))
    for name in sorted(labels.keys() - images.keys()):
        problems.append(Problem(labels[name], f"label without image: expected {root / 'images' / labels[name].name}"))
    cases = [Case(n, images[n], labels[n]) for n in sorted(images.keys() & labels.keys())]
    return cases, problems


def _dicom_cases(folder: Path) -> tuple[list[Case], list[Problem]]:
    """One case per folder of ``dicom/``; what is inside is read and checked when the case is loaded."""
    cases, problems = [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if not path.is_dir():
            problems.append(Problem(path, f"{DICOM_FOLDER}/ holds one folder per case (its image series and its "
                                          "SEG, RTSTRUCT or NRRD label): move this file into its case's folder"))
        elif (bad := bad_name(path.name)) is not None:
            problems.append(Problem(path, bad.replace("file name", "folder name").replace("file (and its image or "
                                                                                          "label partner)", "folder")))
        else:
            cases.append(Case(path.name, path, path))
    return cases, problems


def _from_manifest(manifest: Path) -> tuple[list[Case], list[Problem]]:
    try:
        return _read_manifest(manifest)
    except UnicodeDecodeError as exc:
        return [], [Problem(manifest, f"not UTF-8 text ({exc.reason} at byte {exc.start}); save the "
                                      "manifest as a UTF-8 CSV")]


def _read_manifest(manifest: Path) -> tuple[list[Case], list[Problem]]:
    problems: list[Problem] = []
    cases: list[Case] = []
    seen: dict[str, int] = {}
    # utf-8-sig: spreadsheet programs write a byte-order mark before the header
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, restkey=_EXTRA)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if "image" not in columns or "label" not in columns:
            return [], [Problem(manifest, f"header must have columns image,label[,split]; found {columns}")]
        for row in reader:
            line = reader.line_num  # the file's line, counting blank lines that DictReader skips
            where = f"{manifest}:{line}"
            extra = [v.strip() for v in row.pop(_EXTRA, None) or [] if v and v.strip()]
            if extra:  # empty trailing cells (``a.nii,b.nii,``) are harmless
                problems.append(Problem(Path(where), f"row has more values than the header's {len(columns)} "
                                                     f"columns ({', '.join(columns)}); extra: {', '.join(extra)}"))
                continue
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            if not row.get("image") or not row.get("label"):
                problems.append(Problem(Path(where), "row needs both an image and a label path"))
                continue
            split = row.get("split") or None
            if split is not None and split not in SPLITS:
                problems.append(Problem(Path(where), f"split '{split}' is not one of {', '.join(SPLITS)}"))
                continue
            image = (manifest.parent / row["image"]).resolve()
            label = (manifest.parent / row["label"]).resolve()
            name = image.name if image.is_dir() else case_name(image)
            if (bad := bad_name(name)) is not None:
                problems.append(Problem(image, f"{bad} (listed at {where})"))
                continue
            if name in seen:
                problems.append(Problem(Path(where), f"case '{name}' already listed on line {seen[name]}"))
                continue
            seen[name] = line
            for kind, path in (("image", image), ("label", label)):
                if not (path.is_file() or (kind == "image" and path.is_dir())):  # a folder: a DICOM series
                    other = "label" if kind == "image" else "image"
                    problems.append(Problem(path, f"{kind} file listed at {where} does not exist "
                                                  f"({other} without {kind})"))
            cases.append(Case(name, image, label, split))
    return cases, problems
