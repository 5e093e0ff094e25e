"""Find a site's cases: an ``images/`` + ``labels/`` folder pair, or a CSV manifest.

A manifest has a header ``image,label[,split]``; relative paths are relative to the CSV's folder.
A case name (the image's file name without suffix) ends up in results, CSV files and reports, so a
name that is not printable UTF-8 (bytes of another encoding, control characters) is a problem of
that case: the user renames the file, rather than fedseg guessing an encoding.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from fedseg.data.errors import DataError, Problem
from fedseg.data.readers import SUPPORTED_SUFFIXES, case_name, is_supported
from fedseg.errors import printable

SPLITS = ("train", "val", "test")
_EXTRA = "\0extra"  # DictReader key for values beyond the header's columns


@dataclass(frozen=True)
class Case:
    """One image and its label file; ``split`` is set when a manifest fixes it."""

    name: str
    image: Path
    label: Path
    split: str | None = None


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
    problems: list[Problem] = []
    folders = {}
    for kind in ("images", "labels"):
        folder = root / kind
        if not folder.is_dir():
            problems.append(Problem(folder, f"missing folder: a site folder needs images/ and labels/"))
            continue
        folders[kind] = _files_by_case(folder, problems)
    if len(folders) < 2:  # without both folders, every file would be reported as unpaired
        return [], problems
    images, labels = folders["images"], folders["labels"]
    for name in sorted(images.keys() - labels.keys()):
        problems.append(Problem(images[name], f"image without label: expected {root / 'labels' / images[name].name}"))
    for name in sorted(labels.keys() - images.keys()):
        problems.append(Problem(labels[name], f"label without image: expected {root / 'images' / labels[name].name}"))
    cases = [Case(n, images[n], labels[n]) for n in sorted(images.keys() & labels.keys())]
    return cases, problems


def _files_by_case(folder: Path, problems: list[Problem]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        if not is_supported(path):
            problems.append(Problem(path, f"unsupported file type; use {', '.join(SUPPORTED_SUFFIXES)} "
                                          "or move the file out of the site folder"))
            continue
        name = case_name(path)
        if (bad := _bad_name(name)) is not None:
            problems.append(Problem(path, bad))
            continue
        if name in files:
            problems.append(Problem(path, f"two files for case '{name}' (also {files[name].name}); keep one"))
            continue
        files[name] = path
    return files


def _bad_name(name: str) -> str | None:
    """Why ``name`` cannot name a case, or None."""
    if not name:
        return "the file name is only a suffix; give the case a name"
    if printable(name) != name:
        return (f"the file name '{printable(name)}' is not printable UTF-8 (shown with backslash escapes); "
                "rename the file (and its image or label partner) using UTF-8 letters, digits, '-' and '_'")
    return None


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
            name = case_name(image)
            if (bad := _bad_name(name)) is not None:
                problems.append(Problem(image, f"{bad} (listed at {where})"))
                continue
            if name in seen:
                problems.append(Problem(Path(where), f"case '{name}' already listed on line {seen[name]}"))
                continue
            seen[name] = line
            for kind, path in (("image", image), ("label", label)):
                if not path.is_file():
                    other = "label" if kind == "image" else "image"
                    problems.append(Problem(path, f"{kind} file listed at {where} does not exist "
                                                  f"({other} without {kind})"))
            cases.append(Case(name, image, label, split))
    return cases, problems
