"""Preprocessing as the literature does it, built from MONAI dictionary transforms.

Deterministic steps (orientation, spacing, intensity, size) run once per case and are cached
(``data.cache``); random steps (patch sampling with a foreground ratio, flips, 90-degree
rotations) run every time a training sample is drawn (``data.samples``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fedseg.tables import check_range

if TYPE_CHECKING:
    from monai.transforms import Compose

KEYS = ("image", "label")
INTENSITY_MODES = ("none", "clip_rescale", "percentile_rescale", "zscore")
RESIZE_MODES = ("pad_crop", "resize")
MAX_SIZE = 4096
"""Largest ``spatial_size`` or ``patch_size`` along one axis, in voxels."""
AXES = ("LR", "AP", "SI")


@dataclass(frozen=True)
class Preprocessing:
    """How every case of every site is prepared; all sites of an experiment share it.

    intensity: ``clip_rescale`` clips to ``clip`` (e.g. CT HU -200..250) and maps to [-1, 1];
    ``percentile_rescale`` does the same between per-case ``percentiles`` (for MR);
    ``zscore`` subtracts the mean and divides by the standard deviation per channel.
    """

    orientation: str | None = "RAS"
    spacing: tuple[float, ...] | None = None
    intensity: str = "percentile_rescale"
    clip: tuple[float, float] | None = None
    percentiles: tuple[float, float] = (0.5, 99.5)
    spatial_size: tuple[int, ...] | None = None
    resize_mode: str = "pad_crop"
    patch_size: tuple[int, ...] | None = None
    patches_per_case: int = 1
    foreground_ratio: float = 0.5
    flip: bool = False
    rotate90: bool = False
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.intensity not in INTENSITY_MODES:
            raise ValueError(f"preprocessing.intensity must be one of {INTENSITY_MODES}, got {self.intensity!r:.40}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"preprocessing.resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r:.40}")
        if (self.intensity == "clip_rescale" or self.clip is not None) and (
                self.clip is None or len(self.clip) != 2 or self.clip[0] >= self.clip[1]):
            raise ValueError(f"preprocessing.clip must be [lower, upper] with lower < upper for "
                             f"intensity = 'clip_rescale', e.g. [-200, 250], got {self.clip and list(self.clip)}")
        if len(self.percentiles) != 2 or not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            raise ValueError(f"preprocessing.percentiles must be [lower, upper] with 0 <= lower < upper <= 100, "
                             f"e.g. [0.5, 99.5], got {list(self.percentiles)}")
        for value in self.spacing or ():
            check_range("preprocessing.spacing: each value (mm)", value, 0, above=True)
        for name in ("spatial_size", "patch_size"):
            for value in getattr(self, name) or ():
                check_range(f"preprocessing.{name}: each size (voxels)", value, 1, MAX_SIZE)
        check_range("preprocessing.foreground_ratio", self.foreground_ratio, 0, 1)
        check_range("preprocessing.patches_per_case", self.patches_per_case, 1, 1024)
        if self.orientation and not _orientation_ok(self.orientation):
            raise ValueError(f"preprocessing.orientation must be 3 letters naming each axis once (one of L/R, A/P, "
                             f"S/I), e.g. 'RAS', or '' to keep the files' orientation; got {self.orientation!r:.20}")

    def check_dims(self, spatial_dims: int) -> None:
        for name in ("spacing", "spatial_size", "patch_size"):
            value = getattr(self, name)
            if value is not None and len(value) != spatial_dims:
                raise ValueError(f"preprocessing.{name} has {len(value)} values but the task is "
                                 f"{spatial_dims}D: give {spatial_dims} values")


def _orientation_ok(code: str) -> bool:
    return len(code) == 3 and sorted(next((a for a in AXES if c in a), "?") for c in code) == sorted(AXES)


def deterministic_transforms(p: Preprocessing, spatial_dims: int, divisible_by: int,
                             separable: bool = False) -> Compose:
    """Steps applied once per case; the result is what gets cached and evaluated on.

    The output keeps MONAI's metadata (the affine after resampling); the cache strips it.
    ``separable``: resample axis-aligned grids per axis (``data.resample``, the same values, 5-10x
    faster); off where MONAI's ``Invertd`` must undo the steps (``fedseg predict``).
    """
    from monai.transforms import (Compose, DivisiblePadd, FgBgToIndicesd, NormalizeIntensityd, Orientationd,
                                  Resized, ResizeWithPadOrCropd, ScaleIntensityRanged,
                                  ScaleIntensityRangePercentilesd, Spacingd, SpatialPadd)

    steps: list = []
    if spatial_dims == 3 and p.orientation:
        steps.append(Orientationd(keys=KEYS, axcodes=p.orientation, labels=None))
    if p.spacing is not None and separable:
        from fedseg.data.resample import SeparableSpacingd

        steps.append(SeparableSpacingd(KEYS, p.spacing))
    elif p.spacing is not None:
        steps.append(Spacingd(keys=KEYS, pixdim=p.spacing, mode=("bilinear", "nearest")))
    if p.spatial_size is not None and p.resize_mode == "resize":
        # before intensity: its statistics are those of the image the network sees, and of 128x128
        # values instead of a 1920x1080 picture's (percentiles of those took most of the preparation)
        steps.append(Resized(keys=KEYS, spatial_size=p.spatial_size, mode=("area", "nearest")))
    if p.intensity == "clip_rescale":
        lower, upper = p.clip
        steps.append(ScaleIntensityRanged(keys="image", a_min=lower, a_max=upper, b_min=-1.0, b_max=1.0, clip=True))
    elif p.intensity == "percentile_rescale":
        lower, upper = p.percentiles
        steps.append(ScaleIntensityRangePercentilesd(keys="image", lower=lower, upper=upper, b_min=-1.0,
                                                     b_max=1.0, clip=True, channel_wise=True))
    elif p.intensity == "zscore":
        steps.append(NormalizeIntensityd(keys="image", channel_wise=True))
    if p.spatial_size is not None and p.resize_mode == "pad_crop":  # after intensity: padding is not tissue
        steps.append(ResizeWithPadOrCropd(keys=KEYS, spatial_size=p.spatial_size))
    if p.patch_size is not None:
        steps.append(SpatialPadd(keys=KEYS, spatial_size=p.patch_size))
        steps.append(FgBgToIndicesd(keys="label"))
    else:  # whole images go through the network: every size must survive the down-sampling
        steps.append(DivisiblePadd(keys=KEYS, k=divisible_by))
    return Compose(steps)


def random_transforms(p: Preprocessing, spatial_dims: int) -> Compose:
    """Flips and 90-degree rotations, drawn anew for every training sample (``data.samples`` seeds
    them per sample, after cutting the patch: patch sampling follows MONAI's RandCropByPosNegLabeld
    from each case's stored foreground and background locations)."""
    from monai.transforms import Compose, RandFlipd, RandRotate90d

    steps: list = []
    if p.flip:
        steps.extend(RandFlipd(keys=KEYS, prob=0.5, spatial_axis=axis) for axis in range(spatial_dims))
    if p.rotate90:
        steps.append(RandRotate90d(keys=KEYS, prob=0.5, max_k=3, spatial_axes=(0, 1)))
    return Compose(steps)
