"""One site's data: read, checked and preprocessed once into the site's case store, then served from it.

Every case is checked before training starts; all problems of a site are reported together
(DataError). Cases are prepared streaming, in worker processes when there are many
(``data.prepare``), into the on-disk cache (``data.cache``), which later runs, ``--resume``, other
arms and k-fold members reuse; the dataset itself holds only small references to cached cases
(``data.samples.CachedCase``), so a site's memory does not grow with its data.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from fedseg.data.cache import CaseStore, DataSettings, data_settings
from fedseg.data.errors import DataError, Problem
from fedseg.data.nnunet import task_problems
from fedseg.data.partition import shard_cases
from fedseg.data.prepare import Recipe, prepared
from fedseg.data.preprocessing import Preprocessing
from fedseg.data.samples import CachedCase, training_loader
from fedseg.data.site import SPLITS, discover_cases
from fedseg.data.site_spec import SiteSpec, site_task
from fedseg.data.splits import SplitFractions, assign_splits
from fedseg.data.task import Task
from fedseg.seeding import stable_seed


class SiteDataset:
    """Preprocessed cases of one site, by split (``train``, ``val``, ``test``)."""

    def __init__(self, spec: SiteSpec, task: Task, preprocessing: Preprocessing,
                 fractions: SplitFractions, seed: int, divisible_by: int = 16, settings: DataSettings | None = None):
        self.name = spec.name
        self.task = task
        self.preprocessing = preprocessing
        own = site_task(spec, task)
        self.annotated = [task.class_names.index(name) for name in own.class_names]
        """Task class indices this site annotates (all of them unless the site declares labels)."""
        self.settings = settings = settings or data_settings()
        self.store = CaseStore.shared(settings.cache, settings.memory_bytes)
        cases = discover_cases(spec.name, spec.path)
        if spec.shard is not None:
            cases = shard_cases(cases, *spec.shard, seed=seed)
        by_split = assign_splits(cases, fractions, seed, spec.name)
        # split problems are reported together with the problems of the files, not on their own
        problems: list[Problem] = self._check_splits(spec, by_split, fractions) + task_problems(spec.path, own)

        listed = [(split, case) for split in SPLITS for case in by_split[split]]
        recipe = Recipe(own, tuple(self.annotated), preprocessing, divisible_by, spec.recontrast)
        entries: dict[int, CachedCase] = {}
        for index, entry, case_problems in prepared([case for _, case in listed], recipe, self.store,
                                                    settings.prep_workers):
            problems.extend(case_problems)
            if entry is not None:
                entries[index] = CachedCase(self.store, entry)
        if problems:
            raise DataError(spec.name, problems)
        self.cases: dict[str, list[CachedCase]] = {split: [] for split in SPLITS}
        for index, (split, _) in enumerate(listed):
            self.cases[split].append(entries[index])
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
        pooled.annotated, pooled.settings, pooled.store = first.annotated, first.settings, first.store
        pooled.cases = {split: [case.renamed(f"{site.name}/{case['case']}")
                                for site in sites for case in site.cases[split]] for split in SPLITS}
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
        return folded

    @property
    def n_train(self) -> int:
        return len(self.cases["train"])

    def train_loader(self, batch_size: int, seed: int) -> DataLoader:
        """Batches of augmented training samples, shuffled and augmented reproducibly from ``seed``
        (the same batches for any number of loader workers: ``FEDSEG_LOADER_WORKERS``)."""
        return training_loader(self.cases["train"], self.preprocessing, self.task.spatial_dims, batch_size, seed,
                               self.settings.loader_workers)

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
        shapes = {tuple(c.shape[1:]) for c in self.cases["train"]}
        if len(shapes) > 1:
            raise DataError(self.name, [Problem(Path(self.name), (
                f"training images have {len(shapes)} different shapes after preprocessing (e.g. "
                f"{sorted(shapes)[:3]}); set preprocessing.spatial_size or preprocessing.patch_size")
            )])
