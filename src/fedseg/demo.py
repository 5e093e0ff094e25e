"""The built-in demo: three synthetic 2D sites with different acquisitions, FedAvg, a small U-Net.

Sized to finish in about two minutes on two CPU cores while clearly learning.
"""

from __future__ import annotations

from pathlib import Path

from fedseg.data.synthetic import write_demo_sites
from fedseg.experiment import Experiment, parse_experiment

DEMO_ROUNDS = 20
DEMO_CASES = 60
DEMO_SIZE = 96


def demo_experiment(data_dir: Path, rounds: int | None = None, n_cases: int | None = None, seed: int = 0) -> Experiment:
    """Write the demo sites under ``data_dir`` and return the experiment that trains on them."""
    sites = write_demo_sites(Path(data_dir), n_cases=n_cases or DEMO_CASES, size=DEMO_SIZE, seed=seed)
    return parse_experiment({
        "name": "demo",
        "seed": seed,
        "task": {"labels": {"background": 0, "lesion": 1}, "spatial_dims": 2, "in_channels": 1},
        "sites": [{"name": name, "path": str(path.resolve())} for name, path in sites.items()],
        "splits": {"train": 0.7, "val": 0.1, "test": 0.2},
        "preprocessing": {"intensity": "percentile_rescale", "flip": True, "rotate90": True},
        "model": {"name": "UNet", "channels": [16, 32, 64, 128], "num_res_units": 1},
        "training": {"loss": "dice_ce", "lr": 2e-3, "batch_size": 8, "local_epochs": 2},
        "federation": {"rounds": rounds or DEMO_ROUNDS},
        "plan": {"name": "fedavg"},
    })
