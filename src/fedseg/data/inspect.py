"""Look at a site before using it: per-case shapes, spacings, intensities and label values."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedseg.data.errors import DataError, Problem
from fedseg.data.loading import load_case
from fedseg.data.nnunet import task_problems
from fedseg.data.readers import NIFTI_SUFFIXES, ReadError, read_volume
from fedseg.data.site import discover_cases
from fedseg.data.task import Task


@dataclass
class CaseSummary:
    name: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    channels: int
    intensity: tuple[float, float]
    label_counts: dict[int, int]
    binarised: bool


@dataclass
class SiteInspection:
    path: Path
    cases: list[CaseSummary] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def label_totals(self) -> dict[int, int]:
        totals: dict[int, int] = {}
        for case in self.cases:
            for value, count in case.label_counts.items():
                totals[value] = totals.get(value, 0) + count
        return dict(sorted(totals.items()))


def inspect_site(path: Path, labels: dict[str, int | str] | None = None, spatial_dims: int | None = None,
                 in_channels: int | None = None) -> SiteInspection:
    """Read every case of the site at ``path``; problems are collected, not raised.

    Without ``labels`` any integer label values are accepted (and listed); without
    ``spatial_dims`` it is 3 for NIfTI sites and 2 for image sites.
    """
    inspection = SiteInspection(Path(path))
    try:
        cases = discover_cases(Path(path).name, Path(path))
    except DataError as exc:
        inspection.problems.extend(exc.problems)
        return inspection
    dicom = cases[0].image.is_dir()  # a DICOM series: 3D, one channel
    dims = spatial_dims or (3 if dicom or cases[0].image.name.lower().endswith(NIFTI_SUFFIXES) else 2)
    channels = in_channels or len(cases[0].channels) or (1 if dicom else _channels(cases[0].image, dims))
    task = Task(labels or {"background": 0, "foreground": 1}, dims, channels)
    if labels is not None:  # dataset.json of an nnU-Net site, against the declared labels
        inspection.problems.extend(task_problems(Path(path), task))
    for case in cases:
        loaded, problems = load_case(case, task, check_declared=labels is not None)
        inspection.problems.extend(problems)
        if loaded is not None:
            array = loaded.image.array
            inspection.cases.append(CaseSummary(
                case.name, loaded.image.spatial_shape, loaded.image.spacing, array.shape[0],
                (float(np.min(array)), float(np.max(array))), loaded.label_counts, loaded.binarised))
    return inspection


def _channels(path: Path, spatial_dims: int) -> int:
    """The first image's channel count, taken as the site's when none is declared."""
    try:
        return read_volume(path, spatial_dims).array.shape[0]
    except ReadError:
        return 1  # load_case reports the unreadable file
