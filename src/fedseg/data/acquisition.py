"""Simulated acquisition differences: make one site's images look as if taken another way.

For cross-domain federations built from one public dataset (Parekh et al. federate sites whose
images of the same anatomy differ in modality). ``invert`` maps each image's intensities
``I -> lo + hi - I`` between its own 0.5th and 99.5th percentiles (clipped there), so dark
structures become bright and bright ones dark: on T1-weighted MRI this mimics the contrast of a
T2-weighted scan (CSF bright, white matter darker than grey matter). Labels are unchanged.

``Scanner`` / ``scan``: the milder differences between hospitals imaging with the same weighting
(tissue contrast, coil bias field, native resolution, intensity scale, Rician noise), used to build
heterogeneous sites from one dataset (``data.hospitals2d``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RECONTRASTS = ("invert",)


def recontrast(image: np.ndarray, kind: str) -> np.ndarray:
    if kind != "invert":
        raise ValueError(f"recontrast must be one of {RECONTRASTS}, got '{kind}'")
    lo, hi = np.percentile(image, [0.5, 99.5])
    return (lo + hi - np.clip(image, lo, hi)).astype(image.dtype, copy=False)


@dataclass(frozen=True)
class Scanner:
    """How one hospital's scanner and export turn an anatomy image (scaled to about [0, 1]) into grey levels.

    ``gamma``: tissue contrast (I -> I ** gamma; < 1 flattens bright tissue, > 1 darkens grey matter);
    ``bias``: amplitude of a smooth multiplicative field across the image (coil inhomogeneity);
    ``pixel_mm``: native in-plane resolution; above 1 the image is acquired that coarse and
    interpolated back onto the 1 mm grid (the labels stay on it); ``brightness``: grey level of
    intensity 1; ``noise``: sd of the Rician noise of magnitude MR images, in grey levels.
    """

    gamma: float = 1.0
    bias: float = 0.0
    pixel_mm: float = 1.0
    brightness: float = 200.0
    noise: float = 0.0

    def __post_init__(self) -> None:
        for name, low, high in (("gamma", 0.1, 10), ("bias", 0, 0.9), ("pixel_mm", 1, 8),
                                ("brightness", 1, 255), ("noise", 0, 100)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"scanner {name} must be a number from {low} to {high}, got {value!r:.40}")


def scan(image: np.ndarray, scanner: Scanner, rng: np.random.Generator) -> np.ndarray:
    """``image`` (2D, about [0, 1]) as ``scanner`` records it: uint8 grey levels, same shape."""
    from scipy import ndimage

    image = np.clip(np.asarray(image, dtype=np.float64), 0, None) ** scanner.gamma
    rows, cols = np.mgrid[0:1:complex(0, image.shape[0]), 0:1:complex(0, image.shape[1])]
    gy, gx = rng.uniform(-1, 1, 2)
    image = image * (1 + scanner.bias * (gy * (rows - 0.5) + gx * (cols - 0.5)) * 2)
    if scanner.pixel_mm > 1:  # anti-aliased acquisition on the coarse grid, interpolated back
        coarse = ndimage.zoom(ndimage.gaussian_filter(image, 0.42 * scanner.pixel_mm), 1 / scanner.pixel_mm,
                              order=1, grid_mode=True, mode="nearest")
        image = ndimage.zoom(coarse, np.divide(image.shape, coarse.shape), order=1, grid_mode=True, mode="nearest")
    image = image * scanner.brightness
    real, imaginary = rng.normal(0, scanner.noise, (2, *image.shape)) if scanner.noise else (0, 0)
    return np.clip(np.hypot(image + real, imaginary), 0, 255).round().astype(np.uint8)
