"""The shipped example experiments parse, and their data loads where the shared data is present."""

from pathlib import Path

import pytest

from fedseg.experiment import load_experiment
from fedseg.study import load_sites

EXAMPLES = sorted(p for p in (Path(__file__).resolve().parents[1] / "examples").glob("*.toml")
                  if not p.stem.endswith("_sweep"))  # sweep grids: tests/test_sweep.py


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_parses(path):
    experiment = load_experiment(path)
    assert len(experiment.sites) >= 2


@pytest.mark.real_data
def test_hippocampus_example_sites_are_disjoint_shards_of_the_shared_data():
    experiment = load_experiment(Path(__file__).resolve().parents[1] / "examples" / "hippocampus_fedavg.toml")
    if not experiment.sites[0].path.is_dir():
        pytest.skip(f"shared data not found at {experiment.sites[0].path}")
    sites = load_sites(experiment)
    names = [{c["case"] for split in s.cases.values() for c in split} for s in sites.values()]
    assert sum(map(len, names)) == 260 and len(set().union(*names)) == 260
    assert all(len(s.cases["test"]) == 17 for s in sites.values())
    assert sites["site_a"].cases["train"][0]["image"].shape == (1, 40, 56, 40)
