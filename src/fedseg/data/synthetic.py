"""Built-in synthetic multi-site 2D data for the demo and the tests: no download needed.

Each site sees the same task (segment bright "lesions" among darker distractor blobs on a
textured background) through its own acquisition: contrast and intensity scale, noise, blur,
a smooth bias field, and different object sizes and shapes. Files are written as real PNG/JPEG
images with 0/255 masks, so the demo goes through the same readers and checks as user data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage


@dataclass(frozen=True)
class SiteStyle:
    """One site's acquisition and population."""

    name: str
    contrast: float  # lesion brightness above background, in grey levels
    scale: float  # global intensity scale of the scanner
    noise: float  # Gaussian noise sd, in grey levels
    blur: float  # Gaussian blur sigma, pixels
    bias: float  # amplitude of a smooth multiplicative bias field
    radius: tuple[float, float]  # lesion radius range, pixels
    elongation: float  # max axis ratio of the ellipses
    image_format: str = "png"


DEMO_SITES = (
    SiteStyle("hospital_a", contrast=70, scale=1.0, noise=8, blur=0.0, bias=0.05, radius=(5, 9), elongation=1.3),
    SiteStyle("hospital_b", contrast=60, scale=0.7, noise=13, blur=0.7, bias=0.1, radius=(3, 6), elongation=1.8),
    SiteStyle("hospital_c", contrast=55, scale=1.25, noise=6, blur=1.6, bias=0.35, radius=(7, 12),
              elongation=2.5, image_format="jpg"),
)


def make_case(style: SiteStyle, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8, mask bool) pair of ``size`` x ``size`` pixels."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 3) * 25
    image = 70 + texture
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(rng.integers(1, 4)):  # lesions
        blob = _ellipse(rng, yy, xx, size, style.radius, style.elongation)
        mask |= blob
        image = image + blob * style.contrast * rng.uniform(0.8, 1.2)
    for _ in range(rng.integers(1, 4)):  # dark distractors: structures that are not lesions
        image = image - _ellipse(rng, yy, xx, size, (3, 10), 2.0) * 35
    gy, gx = rng.uniform(-1, 1, 2)
    image = image * (1 + style.bias * (gy * (yy / size - 0.5) + gx * (xx / size - 0.5)) * 2)
    image = ndimage.gaussian_filter(image, style.blur) if style.blur else image
    image = image * style.scale + rng.normal(0, style.noise, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _ellipse(rng, yy, xx, size, radius, elongation) -> np.ndarray:
    cy, cx = rng.uniform(0.15, 0.85, 2) * size
    r = rng.uniform(*radius)
    ratio = rng.uniform(1, elongation)
    angle = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = dy * np.cos(angle) + dx * np.sin(angle)
    v = -dy * np.sin(angle) + dx * np.cos(angle)
    return (u / (r * ratio)) ** 2 + (v / (r / ratio)) ** 2 <= 1


def write_site(root: Path, style: SiteStyle, n_cases: int, size: int, seed: int) -> Path:
    """Write ``root/images`` and ``root/labels`` for one site; returns ``root``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(n_cases):
        image, mask = make_case(style, rng, size)
        name = f"{style.name}_{i:03d}"
        options = {"quality": 90} if style.image_format == "jpg" else {}
        Image.fromarray(image).save(root / "images" / f"{name}.{style.image_format}", **options)
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / "labels" / f"{name}.png")
    return root


def write_demo_sites(root: Path, n_cases: int = 48, size: int = 64, seed: int = 0,
                     styles: tuple[SiteStyle, ...] = DEMO_SITES) -> dict[str, Path]:
    """All demo sites under ``root``; the same seed writes the same pixels."""
    return {style.name: write_site(root / style.name, style, n_cases, size, seed + i)
            for i, style in enumerate(styles)}
