"""Three 2D "hospitals" that differ like real ones, built from one labelled 3D MRI dataset.

Each source volume becomes one sagittal slice through its labelled structure, at one hospital:
- case mix: volumes are ranked by the size of the labelled structure (with jitter, so the ranges
  overlap) and dealt out in ``HOSPITALS`` order, so the memory clinic sees the smallest
  (atrophied) hippocampi and the community hospital the largest; each hospital also cuts its slice
  from its own part of the structure's left-right extent (central slices show more of it);
- size: cases in proportion to ``share`` (the university hospital has 3x the memory clinic's);
- acquisition: each hospital's ``Scanner`` (``data.acquisition``): tissue contrast, bias field,
  native resolution, brightness, Rician noise; the community hospital exports lossy JPEG.
Labels are kept as stored, on the common 1 mm grid (``size`` pixels, padded or cropped around the
structure). The same source and seed write the same files.

Run ``python -m fedseg.data.hospitals2d SOURCE OUT``; SOURCE is a folder with images/ and labels/
(e.g. MSD Task04 hippocampus), OUT gets one folder per hospital and a README.md with the credit.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nibabel import orientations
from PIL import Image

from fedseg.data.acquisition import Scanner, scan
from fedseg.data.errors import DataError, Problem
from fedseg.data.loading import load_case
from fedseg.data.site import Case, discover_cases
from fedseg.data.task import Task
from fedseg.errors import UserError
from fedseg.files import safe_name
from fedseg.seeding import stable_seed

SIZE = (48, 64)
"""Rows (superior at the top) x columns (along the anterior-posterior axis), 1 mm pixels."""
CASE_MIX_JITTER = 0.15
"""SD of the noise added to each volume's size rank before dealing; the hospitals' ranges overlap."""


@dataclass(frozen=True)
class Hospital:
    name: str
    share: float
    """Relative number of cases."""
    slices: tuple[float, float]
    """Where in the structure's left-right extent the slice is cut (0 and 1: its outermost slices)."""
    scanner: Scanner
    image_format: str = "png"

    def __post_init__(self) -> None:
        safe_name(self.name, "hospital name")
        lo, hi = self.slices
        if not (0 <= lo <= hi <= 1 and self.share > 0 and self.image_format in ("png", "jpg")):
            raise ValueError(f"hospital {self.name}: need share > 0, 0 <= slices[0] <= slices[1] <= 1 and "
                             f"image_format png or jpg; got {self.share}, {self.slices}, {self.image_format!r}")


HOSPITALS = (  # in case-mix order: smallest structures first
    # fast low-resolution protocol for elderly patients; darker grey matter
    Hospital("memory_clinic", 1, (0.2, 0.8), Scanner(gamma=1.6, bias=0.15, pixel_mm=2.2, brightness=230, noise=4)),
    # 3 T research scanner: clean 1 mm images
    Hospital("university", 3, (0.3, 0.7), Scanner(gamma=1.0, bias=0.05, pixel_mm=1.0, brightness=200, noise=3)),
    # older 1.5 T: noisy, washed-out contrast, strong coil bias, lossy export
    Hospital("community", 2, (0.2, 0.8), Scanner(gamma=0.6, bias=0.3, pixel_mm=1.4, brightness=150, noise=12),
             image_format="jpg"),
)

CREDIT = """Derived from the Medical Segmentation Decathlon, Task04_Hippocampus (Vanderbilt University
Medical Center): Simpson et al. 2019, arXiv:1902.09063; Antonelli et al. 2022, Nature Communications
13:4128. Licence CC BY-SA 4.0: this derived data is under the same licence; credit the source above.
(If SOURCE was another dataset, its own licence and credit apply instead.)"""


def build(source: Path, out: Path, seed: int = 0, hospitals: tuple[Hospital, ...] = HOSPITALS,
          size: tuple[int, int] = SIZE) -> dict[str, Path]:
    """Write ``out/<hospital>/images`` and ``labels`` (+ ``out/README.md``); returns each hospital's folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; give an empty or new OUT folder")
    if out.is_dir() and any(out.iterdir()):  # README.md goes into OUT itself: never over a file of the user's
        raise UserError(f"{out} is not empty (it already holds files: another build?); give an empty or new OUT "
                        "folder")
    cases = discover_cases("source", Path(source))
    sizes = {case.name: int(np.count_nonzero(_read(case)[1])) for case in cases}
    dealt = deal(sizes, hospitals, seed)
    for hospital in hospitals:
        for kind in ("images", "labels"):
            (out / hospital.name / kind).mkdir(parents=True, exist_ok=True)
        for case in (c for c in cases if c.name in dealt[hospital.name]):
            image, label = make_case(*_read(case), hospital, np.random.default_rng(
                stable_seed(seed, hospital.name, case.name)), size)
            options = {"quality": 85} if hospital.image_format == "jpg" else {}
            Image.fromarray(image).save(out / hospital.name / "images" / f"{case.name}.{hospital.image_format}",
                                        **options)
            Image.fromarray(label).save(out / hospital.name / "labels" / f"{case.name}.png")
    (out / "README.md").write_text(_readme(source, seed, hospitals, dealt), encoding="utf-8")
    return {hospital.name: out / hospital.name for hospital in hospitals}


def deal(sizes: dict[str, int], hospitals: tuple[Hospital, ...], seed: int) -> dict[str, list[str]]:
    """Case names per hospital: ranked by structure size (plus jitter), cut in ``hospitals`` order by share."""
    names = sorted(sizes)
    if len(names) < 3 * len(hospitals):
        raise UserError(f"{len(names)} source cases are too few for {len(hospitals)} hospitals; "
                        f"give at least {3 * len(hospitals)}")
    rank = np.argsort(np.argsort([sizes[n] for n in names], kind="stable"), kind="stable") / (len(names) - 1)
    key = rank + np.random.default_rng(stable_seed(seed, "case_mix")).normal(0, CASE_MIX_JITTER, len(names))
    order = [names[i] for i in np.argsort(key, kind="stable")]
    shares = np.cumsum([h.share for h in hospitals]) / sum(h.share for h in hospitals)
    cuts = [0, *np.round(shares * len(names)).astype(int)]
    return {h.name: sorted(order[cuts[i]:cuts[i + 1]]) for i, h in enumerate(hospitals)}


def make_case(volume: np.ndarray, label: np.ndarray, hospital: Hospital, rng: np.random.Generator,
              size: tuple[int, int] = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One sagittal slice of a RAS volume through its labelled structure: (uint8 image, uint8 label)."""
    present = np.flatnonzero(label.any(axis=(1, 2)))
    lo, hi = present[0], present[-1]
    wanted = lo + rng.uniform(*hospital.slices) * (hi - lo)
    index = int(present[np.argmin(np.abs(present - wanted))])  # a slice that shows the structure
    # (A, S) -> rows from superior to inferior, columns along A-P
    image, mask = (np.flipud(a[index].T) for a in (volume, label))
    image, mask = _fit(image, mask, size)
    top = np.percentile(volume[volume > 0], 99.5) if (volume > 0).any() else 1.0
    return scan(image / max(float(top), 1e-6), hospital.scanner, rng), mask.astype(np.uint8)


def _fit(image: np.ndarray, mask: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pad (centred) or crop (around the structure) each axis to ``size``."""
    for axis, want in enumerate(size):
        have = image.shape[axis]
        if have < want:
            before = (want - have) // 2
            pad = [(0, 0), (0, 0)]
            pad[axis] = (before, want - have - before)
            image, mask = np.pad(image, pad), np.pad(mask, pad)
        elif have > want:
            centre = int(np.flatnonzero(mask.any(axis=1 - axis)).mean())
            start = min(max(centre - want // 2, 0), have - want)
            image, mask = (np.take(a, range(start, start + want), axis=axis) for a in (image, mask))
    return image, mask


def _read(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """A case's image (float) and label (as stored), both reoriented to RAS; DataError if unusable."""
    loaded, problems = load_case(case, Task({"background": 0, "structure": 1}, 3, 1), check_declared=False)
    if loaded is not None:
        label = loaded.label
        if label.min() < 0 or label.max() > 255:
            problems = [Problem(case.label, f"label values {label.min()}..{label.max()} do not fit 8-bit PNG "
                                            "labels (0..255); relabel the source")]
        elif not label.any():
            problems = [Problem(case.label, "label has no foreground: no slice through the structure to cut; "
                                            "remove the case from the source")]
        else:
            turn = orientations.ornt_transform(orientations.io_orientation(loaded.image.affine),
                                               orientations.axcodes2ornt("RAS"))
            return (orientations.apply_orientation(loaded.image.array[0], turn),
                    orientations.apply_orientation(label, turn))
    raise DataError("source", problems)


def _readme(source: Path, seed: int, hospitals: tuple[Hospital, ...], dealt: dict[str, list[str]]) -> str:
    rows = "\n".join(f"| {h.name} | {len(dealt[h.name])} | {h.slices[0]:g}-{h.slices[1]:g} | {h.scanner.gamma:g} | "
                     f"{h.scanner.bias:g} | {h.scanner.pixel_mm:g} | {h.scanner.brightness:g} | {h.scanner.noise:g} | "
                     f"{h.image_format} |" for h in hospitals)
    return (f"# 2D hospitals built by fedseg.data.hospitals2d (seed {seed})\n\nSource: {Path(source).name}. "
            f"One sagittal slice per source volume.\n\n| hospital | cases | slices | gamma | bias | pixel mm | "
            f"brightness | noise | format |\n|---|---|---|---|---|---|---|---|---|\n{rows}\n\n{CREDIT}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedseg.data.hospitals2d", description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="labelled 3D volumes: a folder with images/ and labels/")
    parser.add_argument("out", type=Path, help="new folder for the hospitals (keep it outside your repository)")
    parser.add_argument("--seed", type=int, default=0, help="case mix, slices and noise (default 0)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error("--seed must be 0 or more")
    try:
        folders = build(args.source, args.out, args.seed)
    except UserError as exc:
        print(exc, file=sys.stderr)
        return 2
    for name, folder in folders.items():
        print(f"{name}: {sum(1 for _ in (folder / 'images').iterdir())} cases in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
