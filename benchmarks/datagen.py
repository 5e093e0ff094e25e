"""Generated sites for the data benchmarks (``data_prep``, ``training_throughput``, ``big_site``).

2D: RGB PNG (every fourth one JPEG) images of mixed sizes with 0/255 PNG masks, in a site folder
with ``images/`` and ``masks/`` (files of the same case name), as public 2D sets come.
3D: int16 NIfTI CT-like volumes (air, an abdomen-like body ellipse, an organ ellipsoid as label 1)
with a RAS affine, in ``images/`` and ``labels/``. Existing files are reused (same name = same
case), so a large site is written once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZES_2D = ((1920, 1080), (1280, 720), (1024, 768), (800, 600), (640, 480), (512, 512), (320, 240))
"""(width, height) of the generated 2D images: mixed, up to full HD."""


def write_2d_site(root: Path, cases: int, seed: int = 0, sizes=SIZES_2D, jpeg_every: int = 4) -> Path:
    """``cases`` RGB images with binary masks under ``root``; returns ``root``."""
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(cases):
        name = f"case_{index:04d}"
        suffix = ".jpg" if jpeg_every and index % jpeg_every == jpeg_every - 1 else ".png"
        width, height = sizes[int(rng.integers(len(sizes)))]
        image_path, mask_path = root / "images" / (name + suffix), root / "masks" / (name + ".png")
        if image_path.exists() and mask_path.exists():
            continue
        y, x = np.ogrid[:height, :width]
        cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
        ry, rx = rng.uniform(0.1, 0.25) * height, rng.uniform(0.1, 0.25) * width
        inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0
        base = (x * (120.0 / width) + y * (60.0 / height)).astype(np.float32)  # a smooth background
        rgb = np.stack([base + 40, base + 20, base], axis=-1)
        rgb[inside] += np.array([90.0, 40.0, 30.0], np.float32)
        rgb += rng.normal(0, 6, size=(height // 4 + 1, width // 4 + 1, 1)).repeat(4, 0).repeat(4, 1)[:height, :width]
        pixels = np.clip(rgb, 0, 255).astype(np.uint8)
        if suffix == ".png":
            Image.fromarray(pixels, "RGB").save(image_path, compress_level=1)
        else:
            Image.fromarray(pixels, "RGB").save(image_path, quality=90)
        Image.fromarray((inside * 255).astype(np.uint8), "L").save(mask_path, compress_level=1)
    return root


def write_3d_site(root: Path, cases: int, shape=(256, 256, 64), spacing=(0.8, 0.8, 2.5), seed: int = 0,
                  compressed: bool = True, log=None) -> Path:
    """``cases`` int16 CT-like NIfTI volumes with organ labels under ``root`` (RAS affine); returns ``root``."""
    import nibabel as nib

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if compressed else ".nii"
    affine = np.diag([*map(float, spacing), 1.0])
    nx, ny, nz = shape
    x = (np.arange(nx, dtype=np.float32) - nx / 2)[:, None, None] / (0.42 * nx)
    y = (np.arange(ny, dtype=np.float32) - ny / 2)[None, :, None] / (0.32 * ny)
    body2d = (x ** 2 + y ** 2 <= 1.0)  # [nx, ny, 1]: the abdomen's outline, the same on every slice
    z = (np.arange(nz, dtype=np.float32) - nz / 2)[None, None, :]
    for index in range(cases):
        name = f"ct_{index:04d}"
        image_path, label_path = root / "images" / (name + suffix), root / "labels" / (name + suffix)
        if image_path.exists() and label_path.exists():
            continue
        rng = np.random.default_rng((seed, index))
        cx, cy, cz = rng.uniform(-0.2, 0.2, 3)
        organ = (((x - cx) / 0.25) ** 2 + ((y - cy) / 0.3) ** 2 + ((z / (nz / 2) - cz) / 0.5) ** 2) <= 1.0
        volume = np.where(body2d, np.int16(20), np.int16(-1000)) + np.zeros(shape, np.int16)
        volume[organ] = 60
        noise = rng.integers(-20, 21, size=(nx // 2, ny // 2, nz), dtype=np.int16).repeat(2, 0).repeat(2, 1)
        volume += noise[:nx, :ny]
        nib.save(nib.Nifti1Image(volume, affine), image_path)
        nib.save(nib.Nifti1Image(organ.astype(np.uint8), affine), label_path)
        if log and (index + 1) % 10 == 0:
            log(f"  written {index + 1}/{cases} volumes")
    return root
