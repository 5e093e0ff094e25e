"""The plain loop the data benchmarks compare fedseg with: read, check and preprocess one case with
PIL/nibabel, numpy and torch, in the order fedseg's preprocessing applies its steps (since 81d3861:
resizing, then intensity on the small image; orientation, spacing, then intensity for volumes;
before 81d3861 fedseg and this loop took the percentiles on the full-size picture).

2D (``prepare_2d``): PIL open, RGB averaged to grey, the mask binarised at 128, both checked
(same size, finite values), resized with ``torch.nn.functional.interpolate`` (``area`` for the
image, ``nearest`` for the mask) as MONAI's Resized does, percentile rescale to [-1, 1] with numpy.
3D (``prepare_3d``): nibabel load, orientation checked (the generated volumes are RAS: nothing to do), image and label checked (shape, affine, finite values, label values),
resampled with ``interpolate`` (``trilinear`` / ``nearest``) to the target spacing, clipped and
rescaled to [-1, 1]. Results are float32 images and uint8 labels, channel first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def site_cases(root: Path) -> list[tuple[Path, Path]]:
    """(image, label) paths of a generated site (``images/`` + ``masks/`` or ``labels/``), by case name."""
    labels_dir = root / "masks" if (root / "masks").is_dir() else root / "labels"

    def by_name(folder: Path) -> dict[str, Path]:
        return {p.name.split(".")[0]: p for p in sorted(folder.iterdir()) if not p.name.startswith(".")}

    images, labels = by_name(root / "images"), by_name(labels_dir)
    if images.keys() != labels.keys():
        raise ValueError(f"{root}: images and labels do not pair up")
    return [(images[name], labels[name]) for name in sorted(images)]


def prepare_2d(image_path: Path, label_path: Path, size=(128, 128), percentiles=(0.5, 99.5)):
    import torch
    import torch.nn.functional as F
    from PIL import Image

    with Image.open(image_path) as picture:
        grey = np.asarray(picture.convert("RGB"), dtype=np.float32).mean(axis=-1)
    with Image.open(label_path) as picture:
        mask = np.asarray(picture.convert("L"))
    if mask.shape != grey.shape or not np.isfinite(grey).all():
        raise ValueError(f"{image_path}: bad case")
    label = (mask >= 128).astype(np.float32)
    image = F.interpolate(torch.from_numpy(grey)[None, None], size=tuple(size), mode="area")[0].numpy()
    label = F.interpolate(torch.from_numpy(label)[None, None], size=tuple(size), mode="nearest")[0]
    lower, upper = np.percentile(image, percentiles)
    image = np.clip((image - lower) / max(upper - lower, 1e-8) * 2.0 - 1.0, -1.0, 1.0)
    return image.astype(np.float32), label.numpy().astype(np.uint8)


def prepare_3d(image_path: Path, label_path: Path, spacing=(1.6, 1.6, 2.5), clip=(-200.0, 250.0)):
    import nibabel as nib
    import torch
    import torch.nn.functional as F

    image, label = nib.load(str(image_path)), nib.load(str(label_path))
    if nib.aff2axcodes(image.affine) != ("R", "A", "S"):
        raise ValueError(f"{image_path}: the benchmark writes RAS volumes")
    data = np.asarray(image.dataobj, dtype=np.float32)
    labels = np.asarray(label.dataobj)
    if (data.shape != labels.shape or not np.allclose(image.affine, label.affine, atol=1e-3)
            or not np.isfinite(data).all() or not set(np.unique(labels).tolist()) <= {0, 1}):
        raise ValueError(f"{image_path}: bad case")
    zooms = image.header.get_zooms()[:3]
    shape = [max(1, int(round(n * z / s))) for n, z, s in zip(data.shape, zooms, spacing)]
    volume = F.interpolate(torch.from_numpy(data)[None, None], size=shape, mode="trilinear", align_corners=False)[0]
    mask = F.interpolate(torch.from_numpy(labels.astype(np.float32))[None, None], size=shape, mode="nearest")[0]
    lower, upper = clip
    volume = torch.clamp((volume - lower) / (upper - lower) * 2.0 - 1.0, -1.0, 1.0)
    return volume.numpy(), mask.numpy().astype(np.uint8)


def prepare_sites(roots: list[Path], kind: str, **settings) -> list[dict]:
    """Every case of every site, preprocessed and held in memory (``{"image", "label", "case"}``)."""
    prepare = prepare_2d if kind == "2d" else prepare_3d
    cases = []
    for root in roots:
        for image_path, label_path in site_cases(root):
            image, label = prepare(image_path, label_path, **settings)
            cases.append({"image": image, "label": label, "case": f"{root.name}/{image_path.name}"})
    return cases
