"""Training samples from cached cases: patches cut from memory-mapped arrays, then flipped/rotated.

Each sample is drawn from a seed of its own, which the sampler hands out with its index, so the
batches of a round are the same whether loader workers prepare them or the trainer does, and
however many workers there are. A patch is cut straight from the memory-mapped case (only its
voxels are read); its centre is chosen as MONAI's ``RandCropByPosNegLabeld`` chooses it
(``generate_pos_neg_label_crop_centers``, from the case's stored foreground/background locations).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import torch
from monai.data import list_data_collate
from monai.data.meta_obj import get_track_meta, set_track_meta
from monai.transforms.utils import generate_pos_neg_label_crop_centers
from torch.utils.data import DataLoader, Dataset, Sampler

from fedseg.data.cache import CaseStore, Entry
from fedseg.data.preprocessing import Preprocessing, random_transforms


class CachedCase(Mapping):
    """A cached case as the trainer sees it (``image``, ``label``, ``case``, ``spacing``); the
    arrays are read from the store when asked for, so holding a case costs a few hundred bytes."""

    KEYS = ("image", "label", "case", "spacing")
    __slots__ = ("store", "entry", "name")

    def __init__(self, store: CaseStore, entry: Entry, name: str | None = None):
        self.store, self.entry, self.name = store, entry, name or entry.case

    def __getitem__(self, key: str):
        if key == "case":
            return self.name
        if key == "spacing":
            return self.entry.spacing
        if key in ("image", "label"):
            return torch.from_numpy(self.store.array(self.entry, key))
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.KEYS)

    def __len__(self) -> int:
        return len(self.KEYS)

    def renamed(self, name: str) -> CachedCase:
        return CachedCase(self.store, self.entry, name)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.entry.shape


class TrainingSamples(Dataset):
    """Augmented training samples of ``cases``; item ``(index, seed)``, or ``index`` alone (its seed
    then drawn in turn from ``seed``, as DP-SGD's Poisson sampling asks for cases)."""

    def __init__(self, cases: list[CachedCase], preprocessing: Preprocessing, spatial_dims: int, seed: int):
        self.cases, self.p = cases, preprocessing
        self._augment = random_transforms(preprocessing, spatial_dims)
        self._draws = np.random.RandomState(seed % 2**32)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, item) -> dict | list[dict]:
        index, seed = item if isinstance(item, tuple) else (item, int(self._draws.randint(2**31)))
        case = self.cases[index]
        rng = np.random.RandomState(seed)
        tracking = get_track_meta()
        set_track_meta(False)  # metadata costs time in every batch and is not used in training
        try:
            if self.p.patch_size is None:
                return self._augmented(self._whole(case), rng)
            return [self._augmented(sample, rng) for sample in self._patches(case, rng)]
        finally:
            set_track_meta(tracking)

    def _whole(self, case: CachedCase) -> dict:
        return {"image": case["image"], "label": case["label"]}

    def _patches(self, case: CachedCase, rng: np.random.RandomState) -> list[dict]:
        store, entry, size = case.store, case.entry, self.p.patch_size
        fg, bg = store.array(entry, "fg"), store.array(entry, "bg")
        centers = generate_pos_neg_label_crop_centers(size, self.p.patches_per_case, self.p.foreground_ratio,
                                                      entry.shape[1:], fg, bg, rng)
        image, label = store.array(entry, "image", mmap=True), store.array(entry, "label", mmap=True)
        samples = []
        for center in centers:
            box = (slice(None), *(slice(int(c) - s // 2, int(c) - s // 2 + s) for c, s in zip(center, size)))
            samples.append({"image": torch.from_numpy(np.array(image[box])),
                            "label": torch.from_numpy(np.array(label[box]))})
        return samples

    def _augmented(self, sample: dict, rng: np.random.RandomState) -> dict:
        if self._augment.transforms:
            self._augment.set_random_state(seed=int(rng.randint(2**31)))
            sample = self._augment(sample)
        return sample


class SeededSampler(Sampler):
    """A shuffled order of the cases for each pass, each index with a seed of its own, both from ``seed``."""

    def __init__(self, count: int, seed: int):
        self.count = count
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.count, generator=self.generator).tolist()
        seeds = torch.randint(0, 2**31 - 1, (self.count,), generator=self.generator).tolist()
        return iter(list(zip(order, seeds)))

    def __len__(self) -> int:
        return self.count


def training_loader(cases: list[CachedCase], preprocessing: Preprocessing, spatial_dims: int, batch_size: int,
                    seed: int, workers: int = 0) -> DataLoader:
    """Batches of augmented samples of ``cases``, the same for any number of loader ``workers``."""
    samples = TrainingSamples(cases, preprocessing, spatial_dims, seed)
    return DataLoader(samples, batch_size=batch_size, sampler=SeededSampler(len(cases), seed),
                      collate_fn=list_data_collate, num_workers=workers, drop_last=False,
                      multiprocessing_context="fork" if workers else None)
