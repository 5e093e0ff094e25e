"""A whole study deployed on a local consortium, side by side with its simulation: wall time of each,
their ratio, and whether the deployed results are the simulated ones (FL_global's weights, every
cell of the cross-site matrix, every paired test).

The consortium is real and local: ``fedseg provision`` kits, a coordinator process and one ``fedseg
site`` process per ``[[sites]]`` entry of the experiment (each reading the folder its entry names, with
its shard), mutual TLS on 127.0.0.1, started as a user starts them (``tests/consortium_harness``).
All processes share this machine's CPU cores: on 2 cores the sites, which train at the same time
on separate machines, take turns here, so the ratio is an upper bound of what a consortium of
separate machines sees. The simulation runs after the deployed run, alone.

The README's "Running across institutions" reports a run of this script on
``examples/hippocampus_sarma_arms.toml`` (arms federated + standalone; the centralized arm is
simulation-only). It prints numbers; it never asserts on time.

Run:  .venv/bin/python benchmarks/deployed_study.py EXPERIMENT.toml [--rounds N] [--folds K] [--threads N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's local-consortium helper

from consortium_harness import Consortium  # noqa: E402


class ThreadedConsortium(Consortium):
    """Sites started with ``fedseg site --threads N`` (the README's advice for sites sharing one machine)."""

    def __init__(self, *args, threads: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.threads = threads

    def _start(self, key: str, args: list[str]):
        threads = ["--threads", str(self.threads)] if self.threads and args[0] == "site" else []
        return super()._start(key, [*args, *threads])

from fedseg.consortium import follow, submit  # noqa: E402
from fedseg.experiment import Experiment, load_experiment  # noqa: E402
from fedseg.runtime.run_directory import RunDirectory  # noqa: E402
from fedseg.simulate import run_simulation  # noqa: E402


def deployable_version(experiment: Experiment, rounds: int | None, folds: int | None) -> Experiment:
    """The experiment without the simulation-only centralized arm, with the rounds and folds asked for."""
    arms = [arm for arm in experiment.arms if arm != "centralized"]
    federation = replace(experiment.federation, rounds=rounds or experiment.federation.rounds,
                         folds=folds or experiment.federation.folds)
    return replace(experiment, arms=arms, federation=federation, name=f"{experiment.name}_deployed")


def largest_difference(deployed: Path, simulated: Path) -> float:
    """Largest absolute difference between the two runs' saved FL_global (or its fold members)."""
    names = sorted(p.stem for p in (simulated / "checkpoints").glob("FL_global*.pt"))
    largest = 0.0
    for name in names:
        a, b = RunDirectory(deployed).load_model(name), RunDirectory(simulated).load_model(name)
        largest = max([largest, *(float(np.max(np.abs(a[k] - b[k]), initial=0.0)) for k in b)])
    return largest


def compare(deployed: Path, simulated: Path) -> None:
    results = {side: json.loads((run / "results.json").read_text()) for side, run in
               (("deployed", deployed), ("simulated", simulated))}
    rows_d, rows_s = results["deployed"]["matrix"]["rows"], results["simulated"]["matrix"]["rows"]
    print(f"\ncross-site matrix (mean test Dice; deployed | simulated), models {results['deployed']['models']}")
    columns = results["simulated"]["matrix"]["columns"]
    print(f"{'model':<28}" + "".join(f"{c:>22}" for c in columns))
    cell_gap = 0.0
    for model, row in rows_s.items():
        cells = []
        for column in columns:
            d, s = rows_d.get(model, {}).get(column, {}).get("mean"), row[column].get("mean")
            if d is not None and s is not None:
                cell_gap = max(cell_gap, abs(d - s))
            cells.append(f"{d if d is not None else float('nan'):.4f} | {s if s is not None else float('nan'):.4f}")
        print(f"{model:<28}" + "".join(f"{c:>22}" for c in cells))
    print(f"largest difference of a matrix cell: {cell_gap:.2e}")
    print("\npaired tests (deployed | simulated)")
    for d, s in zip(results["deployed"]["comparisons"], results["simulated"]["comparisons"]):
        label = f"{d['reference']} - {d['model']} at {d['site']} ({d['n_pairs']} cases)"  # results' sign
        print(f"  {label:<60} diff {d.get('mean_difference', float('nan')):+.4f} | "
              f"{s.get('mean_difference', float('nan')):+.4f}  Wilcoxon p {d.get('wilcoxon_p', float('nan')):.2g} | "
              f"{s.get('wilcoxon_p', float('nan')):.2g}")
    print(f"unscored cells, deployed: {results['deployed']['unscored_sites'] or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path)
    parser.add_argument("--rounds", type=int, help="override [federation] rounds (each arm gets as many)")
    parser.add_argument("--folds", type=int, help="override [federation] folds")
    parser.add_argument("--threads", type=int, help="fedseg site --threads N for every site (default: torch's own)")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR (a new folder) and keep it")
    args = parser.parse_args()
    experiment = deployable_version(load_experiment(args.experiment), args.rounds, args.folds)
    if args.keep:
        args.keep.mkdir(parents=True)  # refuses an existing folder: kits must not be provisioned over old ones
    with contextlib.nullcontext(str(args.keep)) if args.keep else tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp).resolve()
        sites = {spec.name: Path(spec.path) for spec in experiment.sites}
        consortium = ThreadedConsortium(workdir, sites, name="study", threads=args.threads)
        consortium.start_all(timeout=300)
        try:
            session, job_id = submit(experiment, consortium.kits["admin"], announce=lambda text: None)
            started = time.perf_counter()
            ended = follow(consortium.kits["admin"], session, job_id, workdir / "deployed",
                           on_progress=lambda job: None)
            deployed_s = time.perf_counter() - started
        finally:
            consortium.stop()
        if ended["state"] != "finished":
            raise SystemExit(f"the deployed run ended as {ended}; logs in {consortium.logs}")
        started = time.perf_counter()
        run_simulation(experiment, workdir / "simulated")
        simulated_s = time.perf_counter() - started
        print(f"{experiment.name}: arms {experiment.arms}, {experiment.federation.rounds} rounds, "
              f"folds {experiment.federation.folds}, {len(sites)} sites")
        print(f"wall time: deployed {deployed_s:.0f} s (sites' torch threads: {args.threads or 'default'}), simulated "
              f"{simulated_s:.0f} s, ratio {deployed_s / simulated_s:.2f} (all processes on this machine's cores)")
        print(f"largest difference of FL_global's weights, deployed vs simulated: "
              f"{largest_difference(workdir / 'deployed', workdir / 'simulated'):.2e}")
        compare(workdir / "deployed", workdir / "simulated")


if __name__ == "__main__":
    main()
