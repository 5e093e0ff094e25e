"""Everything the report reads from a run directory, read once."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from fedseg.evaluation.cross_site import read_cross_site_csv
from fedseg.runtime.run_directory import RunDirectory

FEDERATED = "FL_global"
"""The model the run directory's own ``metrics.jsonl`` trains; other arms keep theirs under ``arms/``."""


@dataclass(frozen=True)
class RunInputs:
    root: Path
    results: dict
    experiment_toml: str
    experiment: dict
    records: list[dict]
    """``cross_site.csv`` rows; empty for a run written before fedseg tested every model on every site."""
    runs: dict[str, list[dict]]
    """``metrics.jsonl`` records per trained arm, in the order of ``results['models']``; empty ones left out."""


def read_run(root: Path) -> RunInputs:
    run_dir = RunDirectory(root)
    results = run_dir.read_json("results.json")
    toml = (run_dir.root / "experiment.toml").read_text()
    csv = run_dir.root / "cross_site.csv"
    runs = {FEDERATED: run_dir.read_metrics()}
    order = {name: i for i, name in enumerate(results.get("models", []))}  # arm directories are named by model
    for arm in sorted((p for p in (run_dir.root / "arms").glob("*") if p.is_dir()),
                      key=lambda p: (order.get(p.name, len(order)), p.name)):
        runs[arm.name] = RunDirectory(arm).read_metrics()
    return RunInputs(root=run_dir.root, results=results, experiment_toml=toml,
                     experiment=tomllib.loads(toml), records=read_cross_site_csv(csv) if csv.exists() else [],
                     runs={name: records for name, records in runs.items() if records})
