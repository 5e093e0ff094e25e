"""Read, check and preprocess a site's cases into the case store, streaming, in worker processes.

Cases already in the store are not opened. The others are prepared one at a time per worker
(never all raw cases at once): read and checked (``loading``), resampled and normalised
(``preprocessing``), and written to the store; only their problems and the store's small entries
come back. Every case runs, so all problems of a site are reported together.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from fedseg.data.acquisition import recontrast
from fedseg.data.cache import CaseStore, Entry, case_key
from fedseg.data.case_files import Case
from fedseg.data.errors import Problem
from fedseg.data.loading import LoadedCase, load_case
from fedseg.data.preprocessing import Preprocessing, deterministic_transforms
from fedseg.data.readers import MAX_VALUES_ENV, max_values
from fedseg.data.task import Task
from fedseg.seeding import stable_seed

MAX_LOCATIONS = 100_000
"""Foreground and background voxel locations kept per case for patch sampling (nnU-Net keeps
10,000 per class): a random subset beyond that, so a 512x512x120 CT keeps 0.8 MB, not 250 MB."""
RANDOM_FIELDS = ("patches_per_case", "foreground_ratio", "flip", "rotate90", "extra")
"""Preprocessing settings drawn per sample, not cached: changing them re-preprocesses nothing."""
AUTO_WORKERS_FROM = 32
"""Cases to prepare from which ``prep_workers = auto`` starts worker processes (their start costs seconds)."""


@dataclass(frozen=True)
class Recipe:
    """Everything that turns a site's case files into a cached case."""

    task: Task
    """The task as the site's files encode it."""
    annotated: tuple[int, ...]
    preprocessing: Preprocessing
    divisible_by: int
    recontrast: str | None = None

    def key(self, case: Case) -> str:
        settings = {k: v for k, v in dataclasses.asdict(self.preprocessing).items() if k not in RANDOM_FIELDS}
        recipe = {"labels": self.task.labels, "names": self.task.names, "dims": self.task.spatial_dims,
                  "channels": self.task.in_channels, "annotated": self.annotated, "recontrast": self.recontrast,
                  "preprocessing": settings, "divisible_by": self.divisible_by, "max_values": max_values()}
        return case_key([*case.image_files, case.label], recipe)


def prepared(cases: list[Case], recipe: Recipe, store: CaseStore,
             workers: int | None) -> Iterator[tuple[int, Entry | None, list[Problem]]]:
    """(index, entry or None, problems) of every case, in no particular order."""
    keys: list[str] = []
    todo = []
    for index, case in enumerate(cases):
        try:
            keys.append(recipe.key(case))
        except OSError as exc:  # a file that cannot even be looked at cannot be read either
            keys.append("")
            yield index, None, [Problem(Path(exc.filename or case.image), f"cannot read the file's details "
                                                                          f"({exc.strerror or exc}); check it")]
            continue
        if (entry := store.get(keys[-1])) is not None:
            yield index, entry, []
        else:
            todo.append(index)
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if len(todo) >= AUTO_WORKERS_FROM else 0
    if workers <= 1 or len(todo) <= 1:
        for index in todo:
            yield index, *prepare_case(cases[index], keys[index], recipe, store)
        return
    context = multiprocessing.get_context("forkserver")  # not fork: the caller may run threads (FLARE's, rich's)
    context.set_forkserver_preload(["fedseg.data.prepare"])  # imported once, in the server the workers fork from
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
        running: dict[Future, int] = {}
        queue = iter(todo)
        for index in queue:  # at most two cases per worker in flight: memory stays bounded
            running[pool.submit(prepare_case, cases[index], keys[index], recipe, store)] = index
            if len(running) >= 2 * workers:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    yield running.pop(future), *future.result()
        for future in list(running):
            yield running.pop(future), *future.result()


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # the workers share the cores: one thread each


def prepare_case(case: Case, key: str, recipe: Recipe, store: CaseStore) -> tuple[Entry | None, list[Problem]]:
    """Read, check and preprocess one case into ``store``: its entry, or None and its problems."""
    loaded, problems = load_case(case, recipe.task)
    if loaded is not None and (too_big := resampled_too_big(loaded, recipe.preprocessing)):
        problems.append(too_big)
    if loaded is None or problems:
        return None, problems
    if recipe.recontrast:
        loaded.image.array = recontrast(loaded.image.array, recipe.recontrast)
    out = _transforms(recipe.preprocessing, recipe.task.spatial_dims, recipe.divisible_by)(
        _as_dict(loaded, recipe.annotated))
    image = out["image"]
    spacing = tuple(float(s) for s in image.pixdim) if hasattr(image, "pixdim") else None
    arrays = {"image": _numpy(image).astype(np.float32, copy=False), "label": _numpy(out["label"]).astype(np.uint8)}
    if "label_fg_indices" in out:
        rng = np.random.default_rng(stable_seed(key, "locations"))
        for name in ("fg", "bg"):
            found = _numpy(out[f"label_{name}_indices"]).astype(np.int64, copy=False)
            arrays[name] = np.sort(rng.choice(found, MAX_LOCATIONS, replace=False)) if found.size > MAX_LOCATIONS \
                else found
    return store.put(key, case.name, arrays, spacing), []


@lru_cache(maxsize=4)
def _transforms(preprocessing: Preprocessing, spatial_dims: int, divisible_by: int):
    return deterministic_transforms(preprocessing, spatial_dims, divisible_by, separable=True)


def _numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def _as_dict(case: LoadedCase, annotated: tuple[int, ...]) -> dict:
    """MONAI's dict form, with the site's class indices mapped to the task's."""
    import torch
    from monai.data.meta_tensor import MetaTensor

    affine = torch.as_tensor(case.image.affine, dtype=torch.float64)
    label = np.asarray(annotated, dtype=np.uint8)[case.label]
    return {"image": MetaTensor(torch.from_numpy(case.image.array), affine=affine),
            "label": MetaTensor(torch.from_numpy(label[None]), affine=affine)}


def resampled_too_big(case: LoadedCase, preprocessing: Preprocessing) -> Problem | None:
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
