"""An image series assembled into a volume: its pixels, its grid in patient space, and the identity of
every slice (the UIDs a DICOM SEG or RTSTRUCT refers to, and a written SEG must refer back to)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedseg.data.readers import Volume
from fedseg.data.task import name_key

__all__ = ["LPS_TO_RAS", "Series", "name_key"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""DICOM patient coordinates are LPS; nibabel's (and fedseg's) world coordinates are RAS."""


@dataclass(frozen=True)
class Series:
    """One image series as a volume.

    ``volume.array``: float32 after rescale slope/intercept, ``[1, X, Y, Z]`` for 3D (X = column,
    Y = row, Z = slice in order of position along the slice normal) or ``[1, rows, columns]`` for a
    2D image; ``volume.affine``: index -> RAS mm. ``origin``, ``directions`` and ``spacing`` give the
    same grid in DICOM's LPS: world = origin + directions @ (index * spacing), ``directions``' columns
    the unit vectors of the array axes.
    """

    volume: Volume
    files: tuple[Path, ...]
    """The image files, in slice order (one file per slice; a 2D image: one file)."""
    sop_instance_uids: tuple[str, ...]
    """SOPInstanceUID of each slice, in slice order."""
    sop_class_uid: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str | None
    modality: str
    origin: np.ndarray
    directions: np.ndarray
    spacing: tuple[float, ...]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.volume.spatial_shape

    def lps_affine(self) -> np.ndarray:
        """Index -> LPS mm (4x4 for 3D)."""
        n = len(self.spacing)
        affine = np.eye(n + 1)
        affine[:n, :n] = self.directions[:n, :n] * np.asarray(self.spacing)
        affine[:n, n] = self.origin[:n]
        return affine
