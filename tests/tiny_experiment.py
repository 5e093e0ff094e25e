"""A tiny synthetic federated experiment that trains in seconds, for tests of the upper layers."""

from __future__ import annotations

import copy
from pathlib import Path

from fedseg.data.synthetic import DEMO_SITES, write_demo_sites


def tiny_experiment(root: Path, rounds: int = 3, n_cases: int = 10, **sections) -> dict:
    """An experiment dict over three 32x32 synthetic sites written under ``root/data``."""
    sites = write_demo_sites(root / "data", n_cases=n_cases, size=32, seed=1, styles=DEMO_SITES)
    experiment = {
        "name": "tiny",
        "seed": 7,
        "task": {"labels": {"background": 0, "lesion": 1}, "spatial_dims": 2},
        "sites": [{"name": name, "path": str(path)} for name, path in sites.items()],
        "splits": {"train": 0.6, "val": 0.2, "test": 0.2},
        "preprocessing": {"intensity": "percentile_rescale", "flip": True},
        "model": {"name": "UNet", "channels": [4, 8, 16], "num_res_units": 1},
        "training": {"loss": "dice_ce", "lr": 1e-2, "batch_size": 4, "local_steps": 3},
        "federation": {"rounds": rounds},
    }
    for section, values in sections.items():  # merge tables, replace plain values
        experiment[section] = {**experiment.get(section, {}), **values} if isinstance(values, dict) else values
    return copy.deepcopy(experiment)
