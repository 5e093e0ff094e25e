"""Simulated acquisition differences: make one site's images look as if taken another way.

For cross-domain federations built from one public dataset (Parekh et al. federate sites whose
images of the same anatomy differ in modality). ``invert`` maps each image's intensities
``I -> lo + hi - I`` between its own 0.5th and 99.5th percentiles (clipped there), so dark
structures become bright and bright ones dark: on T1-weighted MRI this mimics the contrast of a
T2-weighted scan (CSF bright, white matter darker than grey matter). Labels are unchanged.
"""

from __future__ import annotations

import numpy as np

RECONTRASTS = ("invert",)


def recontrast(image: np.ndarray, kind: str) -> np.ndarray:
    if kind != "invert":
        raise ValueError(f"recontrast must be one of {RECONTRASTS}, got '{kind}'")
    lo, hi = np.percentile(image, [0.5, 99.5])
    return (lo + hi - np.clip(image, lo, hi)).astype(image.dtype, copy=False)
