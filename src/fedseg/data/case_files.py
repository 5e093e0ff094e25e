"""A case as files on disk, and the listing of one folder of image or label files by case name.

Shared by every site layout (``site``: images/ + labels/ or masks/, CSV manifests; ``nnunet``:
imagesTr/ + labelsTr/). A case name (the file's name without suffix) ends up in results, CSV files
and reports, so a name that is not printable UTF-8 is a problem of that case: the user renames the
file, rather than fedseg guessing an encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedseg.data.errors import Problem
from fedseg.data.readers import SUPPORTED_SUFFIXES, ReadError, Volume, case_name, is_supported, read_volume
from fedseg.errors import printable

SPLITS = ("train", "val", "test")
AFFINE_TOLERANCE = 1e-3  # mm; files of one case (channels, image and label) share a grid to this precision
MAX_CHANNEL_FILES = 64
"""Most image files one case may have (one per input channel; task.in_channels is at most 64)."""


@dataclass(frozen=True)
class Case:
    """One image and its label file; ``split`` is set when a manifest fixes it.

    ``channels``: where a case's input channels are separate files (nnU-Net's ``CASE_0000``,
    ``CASE_0001``, ...), all of them in channel order; ``image`` is then the first.
    """

    name: str
    image: Path
    label: Path
    split: str | None = None
    channels: tuple[Path, ...] = ()

    @property
    def image_files(self) -> tuple[Path, ...]:
        """Every image file of the case, in channel order."""
        return self.channels or (self.image,)


def files_by_case(folder: Path, problems: list[Problem]) -> dict[str, Path]:
    """The supported image files directly in ``folder`` by case name; other files are problems."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        if not is_supported(path):
            problems.append(Problem(path, f"unsupported file type; use {', '.join(SUPPORTED_SUFFIXES)} "
                                          "or move the file out of the site folder"))
            continue
        name = case_name(path)
        if (bad := bad_name(name)) is not None:
            problems.append(Problem(path, bad))
            continue
        if name in files:
            problems.append(Problem(path, f"two files for case '{name}' (also {files[name].name}); keep one"))
            continue
        files[name] = path
    return files


def bad_name(name: str) -> str | None:
    """Why ``name`` cannot name a case, or None."""
    if not name:
        return "the file name is only a suffix; give the case a name"
    if printable(name) != name:
        return (f"the file name '{printable(name)}' is not printable UTF-8 (shown with backslash escapes); "
                "rename the file (and its image or label partner) using UTF-8 letters, digits, '-' and '_'")
    return None


def read_image(files: tuple[Path, ...], spatial_dims: int, problems: list[Problem]) -> Volume | None:
    """A case's image from its files: one file as it is, or one single-channel file per channel
    stacked in order (they must share one grid); None with the problems of each file otherwise."""
    volumes = []
    for path in files:
        try:
            volumes.append(read_volume(path, spatial_dims))
        except ReadError as exc:
            problems.append(Problem(path, str(exc)))
    if len(volumes) < len(files) or len(files) == 1:
        return volumes[0] if len(volumes) == len(files) else None
    first, before = volumes[0], len(problems)
    for path, volume in zip(files, volumes):
        if volume.array.shape[0] != 1:
            problems.append(Problem(path, f"a channel file must hold one channel, it holds {volume.array.shape[0]}: "
                                          "save each channel as its own file (CASE_0000, CASE_0001, ...)"))
        elif volume.spatial_shape != first.spatial_shape or not np.allclose(volume.affine, first.affine,
                                                                            atol=AFFINE_TOLERANCE):
            problems.append(Problem(path, f"channel on another grid than {files[0].name} (shape "
                                          f"{volume.spatial_shape} vs {first.spatial_shape}, or spacing/origin/"
                                          "orientation differ): resample the channels onto one grid"))
    if len(problems) > before:
        return None
    dtype = np.result_type(*(v.array.dtype for v in volumes))
    return Volume(np.concatenate([v.array.astype(dtype, copy=False) for v in volumes]), first.affine)
