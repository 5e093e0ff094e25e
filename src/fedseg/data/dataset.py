"""One site's data, read, checked, split and preprocessed once, then served from memory.

Every case is read and checked before training starts; all problems of a site are reported
together (DataError). Preprocessed cases are cached so epochs never re-read or re-resample files.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
from monai.data import Dataset, list_data_collate
from monai.data.meta_tensor import MetaTensor
from torch.utils.data import DataLoader

from fedseg.data.acquisition import recontrast
from fedseg.data.errors import DataError, Problem
from fedseg.data.loading import LoadedCase, load_case
from fedseg.data.nnunet import task_problems
from fedseg.data.partition import shard_cases
from fedseg.data.preprocessing import Preprocessing, deterministic_transforms, random_transforms
from fedseg.data.readers import MAX_VALUES_ENV, max_values
from fedseg.data.site import SPLITS, discover_cases
from fedseg.data.site_spec import SiteSpec, site_task
from fedseg.data.splits import SplitFractions, assign_splits
from fedseg.data.task import Task
from fedseg.seeding import stable_seed


class SiteDataset:
    """Preprocessed cases of one site, by split (``train``, ``val``, ``test``)."""

    def __init__(self, spec: SiteSpec, task: Task, preprocessing: Preprocessing,
                 fractions: SplitFractions, seed: int, divisible_by: int = 16):
        self.name = spec.name
        self.task = task
        self.preprocessing = preprocessing
        own = site_task(spec, task)
        self.annotated = [task.class_names.index(name) for name in own.class_names]
        """Task class indices this site annotates (all of them unless the site declares labels)."""
        cases = discover_cases(spec.name, spec.path)
        if spec.shard is not None:
            cases = shard_cases(cases, *spec.shard, seed=seed)
        by_split = assign_splits(cases, fractions, seed, spec.name)
        # split problems are reported together with the problems of the files, not on their own
        problems: list[Problem] = self._check_splits(spec, by_split, fractions) + task_problems(spec.path, own)

        loaded: dict[str, list[LoadedCase]] = {s: [] for s in SPLITS}
        for split, split_cases in by_split.items():
            for case in split_cases:
                result, case_problems = load_case(case, own)
                problems.extend(case_problems)
                if result is not None and (too_big := _resampled_too_big(result, preprocessing)):
                    problems.append(too_big)
                elif result is not None:
                    if spec.recontrast:
                        result.image.array = recontrast(result.image.array, spec.recontrast)
                    loaded[split].append(result)
        if problems:
            raise DataError(spec.name, problems)

        prepare = deterministic_transforms(preprocessing, task.spatial_dims, divisible_by)
        self.cases: dict[str, list[dict]] = {
            split: [_cacheable(prepare(_as_dict(c, self.annotated))) for c in items]
            for split, items in loaded.items()
        }
        self._augment = random_transforms(preprocessing, task.spatial_dims)
        self._check_uniform_size()

    @classmethod
    def pooled(cls, name: str, sites: list[SiteDataset]) -> SiteDataset:
        """Every site's cases in one dataset (the centralized arm: all data at one place).

        Case names become ``site/case`` so that cases of different sites stay distinct.
        """
        first = sites[0]
        pooled = cls.__new__(cls)
        pooled.name, pooled.task, pooled.preprocessing = name, first.task, first.preprocessing
        if any(site.annotated != first.annotated for site in sites):
            raise ValueError("pooling sites with different annotated classes is not supported: "
                             "drop the 'centralized' arm for partially labelled federations")
        pooled.annotated = first.annotated
        pooled.cases = {split: [{**case, "case": f"{site.name}/{case['case']}"}
                                for site in sites for case in site.cases[split]] for split in SPLITS}
        pooled._augment = random_transforms(first.preprocessing, first.task.spatial_dims)
        return pooled

    def fold(self, index: int, count: int, seed: int) -> SiteDataset:
        """This site with training and validation cases re-split for fold ``index`` of ``count``:
        fold ``index`` of the pooled train+val cases validates, the rest trains (test unchanged)."""
        pool = sorted(self.cases["train"] + self.cases["val"], key=lambda c: c["case"])
        if not 0 <= index < count <= len(pool):
            raise DataError(self.name, [Problem(Path(self.name), (
                f"{count} folds need at least {count} training and validation cases, the site has "
                f"{len(pool)}: lower federation.folds"))])
        order = np.random.default_rng(stable_seed(seed, "fold", self.name, count)).permutation(len(pool))
        held_out = {pool[i]["case"] for i in order[index::count]}
        folded = copy.copy(self)
        folded.cases = {"train": [c for c in pool if c["case"] not in held_out],
                        "val": [c for c in pool if c["case"] in held_out], "test": self.cases["test"]}
        folded._augment = random_transforms(self.preprocessing, self.task.spatial_dims)
        return folded

    @property
    def n_train(self) -> int:
        return len(self.cases["train"])

    def train_loader(self, batch_size: int, seed: int) -> DataLoader:
        """Batches of augmented training samples, shuffled and augmented reproducibly from ``seed``."""
        self._augment.set_random_state(seed=seed % (2**32))
        generator = torch.Generator().manual_seed(seed)
        dataset = Dataset(self.cases["train"], transform=self._augment)
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                          collate_fn=list_data_collate, num_workers=0, drop_last=False)

    @staticmethod
    def _check_splits(spec: SiteSpec, by_split: dict, fractions: SplitFractions) -> list[Problem]:
        problems = []
        wanted = {"train": fractions.train, "val": fractions.val, "test": fractions.test}
        for split, items in by_split.items():
            if not items and (wanted[split] > 0 or split == "train"):
                problems.append(Problem(spec.path, f"the '{split}' split has no cases "
                                                   f"({sum(map(len, by_split.values()))} cases in all): add "
                                                   f"cases, or change the split fractions / manifest"))
        return problems

    def _check_uniform_size(self) -> None:
        if self.preprocessing.patch_size is not None or self.preprocessing.spatial_size is not None:
            return
        shapes = {tuple(c["image"].shape[1:]) for c in self.cases["train"]}
        if len(shapes) > 1:
            raise DataError(self.name, [Problem(Path(self.name), (
                f"training images have {len(shapes)} different shapes after preprocessing (e.g. "
                f"{sorted(shapes)[:3]}); set preprocessing.spatial_size or preprocessing.patch_size")
            )])


def _as_dict(case: LoadedCase, annotated: list[int]) -> dict:
    """MONAI's dict form, with the site's class indices mapped to the task's."""
    affine = torch.as_tensor(case.image.affine, dtype=torch.float64)
    label = np.asarray(annotated, dtype=np.uint8)[case.label]
    return {
        "image": MetaTensor(torch.from_numpy(case.image.array), affine=affine),
        "label": MetaTensor(torch.from_numpy(label[None]), affine=affine),
        "case": case.case.name,
    }


def _cacheable(case: dict) -> dict:
    """Plain tensors (metadata costs time in every batch) plus the voxel spacing, for distances."""
    image = case["image"]
    spacing = tuple(float(s) for s in image.pixdim) if isinstance(image, MetaTensor) else None
    plain = {k: v.as_tensor() if isinstance(v, MetaTensor) else v for k, v in case.items()}
    return {**plain, "spacing": spacing}


def _resampled_too_big(case: LoadedCase, preprocessing: Preprocessing) -> Problem | None:
    """A case that resampling to ``preprocessing.spacing`` would blow up past the reader's size limit
    (a header spacing of 1e6 mm, say), found before any resampling."""
    if preprocessing.spacing is None:
        return None
    image = case.image
    size = image.array.shape[0] * math.prod(
        math.ceil(n * s / t) for n, s, t in zip(image.spatial_shape, image.spacing, preprocessing.spacing))
    if size <= max_values():
        return None
    return Problem(case.case.image, f"resampling from spacing {tuple(round(s, 4) for s in image.spacing)} to "
                                    f"{tuple(preprocessing.spacing)} would give {size:,} values, more than the limit "
                                    f"{max_values():,}; check the file's header spacing, or raise {MAX_VALUES_ENV}")
