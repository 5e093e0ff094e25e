"""Read and check one case: everything that would break training is caught here, per file.

Label files must hold integer values declared in the task. One exception, for 2D image formats
only: a binary task's 8-bit mask stored as 0/255, or saved lossily as JPEG, is binarised at 128
(values >= 128 are foreground), since that is how such masks are commonly distributed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedseg.data.case_files import AFFINE_TOLERANCE, Case, read_image
from fedseg.data.errors import Problem
from fedseg.data.readers import IMAGE_2D_SUFFIXES, ReadError, Volume, read_volume
from fedseg.data.task import Task

BINARISE_THRESHOLD = 128


@dataclass
class LoadedCase:
    """A case's pixels as read (image float32, label as class indices) plus summary numbers."""

    case: Case
    image: Volume
    label: np.ndarray
    label_counts: dict[int, int] = field(default_factory=dict)
    """Voxel count per stored label value, before mapping to class indices."""
    binarised: bool = False


def load_case(case: Case, task: Task, check_declared: bool = True) -> tuple[LoadedCase | None, list[Problem]]:
    """The checked case, or None and the list of problems found with it.

    With ``check_declared=False`` (inspecting a site whose labels are not known yet) label values
    are only checked to be integers and are returned as stored, not mapped to class indices.
    """
    # Every check runs whatever else is wrong with the case, so that all of its problems are
    # reported at once (e.g. a label on the wrong grid that also holds undeclared values).
    problems: list[Problem] = []
    if case.image.is_dir():  # a DICOM series and its SEG, RTSTRUCT or NRRD label
        from fedseg.data.dicom.case import read_dicom_case

        image, label = read_dicom_case(case, task, problems, check_declared)
    else:
        image = read_image(case.image_files, task.spatial_dims, problems)
        label = _read(case.label, task, problems)

    image_array = None
    if image is not None:
        image_array = _image_channels(image, case.image, task, problems)
        if image_array is not None and not np.isfinite(image_array).all():
            problems.append(Problem(case.image, "image contains NaN or infinite values; fix or remove the case"))
            image_array = None

    label_array = None if label is None else _single_channel_label(label.array, case.label, problems)
    if image is not None and label is not None:
        if image.spatial_shape != label.spatial_shape:
            problems.append(Problem(case.label, f"label shape {label.spatial_shape} does not match image shape "
                                                f"{image.spatial_shape} ({case.image.name}); resample the label "
                                                "onto the image grid"))
        elif not np.allclose(image.affine, label.affine, atol=AFFINE_TOLERANCE):
            problems.append(Problem(case.label, "label affine (spacing/origin/orientation) does not match the "
                                                f"image's: spacing {_fmt(label.spacing)} vs {_fmt(image.spacing)}, "
                                                f"origin {_fmt(label.affine[:-1, -1])} vs "
                                                f"{_fmt(image.affine[:-1, -1])}; resample the label onto the "
                                                "image grid or fix its header"))
    if label_array is None:
        return None, problems

    label_problems: list[Problem] = []
    if check_declared:
        indices, counts, binarised = _label_classes(label_array, case.label, task, label_problems)
    else:
        indices, counts, binarised = _integer_values(label_array, case.label, label_problems)
    problems.extend(label_problems)
    if problems or image_array is None:
        return None, problems
    volume = Volume(image_array.astype(np.float32, copy=False), image.affine)
    return LoadedCase(case, volume, indices, counts, binarised), []


def _read(path: Path, task: Task, problems: list[Problem]) -> Volume | None:
    try:
        return read_volume(path, task.spatial_dims)
    except ReadError as exc:
        problems.append(Problem(path, str(exc)))
        return None


def _image_channels(image: Volume, path: Path, task: Task, problems: list[Problem]) -> np.ndarray | None:
    array, channels = image.array, image.array.shape[0]
    if channels == task.in_channels:
        return array
    if image.colour and channels in (3, 4) and task.in_channels == 1:
        # RGB picture (or RGB24 NIfTI) of a grey modality. Only colour channels: the channels of
        # a 4D NIfTI are separate modalities (e.g. T1, T1c, T2, FLAIR) and must not be averaged.
        return array[:3].astype(np.float32).mean(axis=0, keepdims=True)
    problems.append(Problem(path, f"image has {channels} channel(s) but task.in_channels is {task.in_channels}; "
                                  "set task.in_channels to match"))
    return None


def _single_channel_label(array: np.ndarray, path: Path, problems: list[Problem]) -> np.ndarray | None:
    if array.shape[0] == 1:
        return array[0]
    if array.shape[0] in (3, 4) and all(np.array_equal(array[0], array[c]) for c in (1, 2)):
        return array[0]  # grey mask saved as RGB
    problems.append(Problem(path, f"label has {array.shape[0]} channels with different content; a label "
                                  "must be a single-channel map of class values"))
    return None


def _integer_values(label: np.ndarray, path: Path,
                    problems: list[Problem]) -> tuple[np.ndarray, dict[int, int], bool]:
    """The label as integers and its voxel count per value, if every value is a finite integer
    (an integer label is kept in its own type: a 512x512x120 CT label as int64 would be 250 MB)."""
    if not (np.issubdtype(label.dtype, np.integer) or label.dtype == bool):
        if not np.isfinite(label).all():
            problems.append(Problem(path, "label contains NaN or infinite values"))
            return label, {}, False
        if not np.array_equal(label, np.round(label)):
            bad = np.unique(label[label != np.round(label)])[:5]
            problems.append(Problem(path, f"label has non-integer values (e.g. {_fmt(bad)}); labels must be "
                                          "integer class values: re-export with nearest-neighbour interpolation"))
            return label, {}, False
        label = label.astype(np.int64)
    return label, _counts(label), False


def _counts(label: np.ndarray) -> dict[int, int]:
    """Voxel count per value: counted in slabs for small non-negative values (no sort, no big copy)."""
    if label.size == 0 or label.dtype == bool or int(label.min()) < 0 or int(label.max()) >= 1 << 16:
        values, counts = np.unique(label, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts)}
    flat, total = label.ravel(order="K"), np.zeros(int(label.max()) + 1, np.int64)
    for start in range(0, flat.size, 1 << 22):
        total += np.bincount(flat[start:start + (1 << 22)], minlength=total.size)
    return {int(v): int(total[v]) for v in np.flatnonzero(total)}


def _label_classes(label: np.ndarray, path: Path, task: Task,
                   problems: list[Problem]) -> tuple[np.ndarray, dict[int, int], bool]:
    before = len(problems)
    label, found, _ = _integer_values(label, path, problems)
    if len(problems) > before:
        return label, found, False
    declared = set(task.class_values)
    binarised = False
    if not set(found) <= declared:
        if _can_binarise(path, label, task):
            label = np.where(label >= BINARISE_THRESHOLD, task.class_values[1], 0)
            binarised = True
        else:
            undeclared = {v: c for v, c in found.items() if v not in declared}
            problems.append(Problem(path, f"undeclared label values {undeclared} (value: voxel count); the "
                                          f"task declares {task.labels}: add them to task.labels or fix the label"))
            return label, found, False
    # every value is declared now: its class index is its rank among the sorted declared values
    if label.dtype != bool and label.min() >= 0 and label.max() < 1 << 16:
        ranks = np.zeros(int(label.max()) + 1, np.uint8)
        for rank, value in enumerate(task.class_values):
            if value < ranks.size:
                ranks[value] = rank
        return ranks[label], found, binarised
    return np.searchsorted(task.class_values, label).astype(np.uint8), found, binarised


def _can_binarise(path: Path, label: np.ndarray, task: Task) -> bool:
    return (task.n_classes == 2 and path.name.lower().endswith(IMAGE_2D_SUFFIXES)
            and label.min() >= 0 and label.max() <= 255)


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in np.ravel(values)) + ")"
