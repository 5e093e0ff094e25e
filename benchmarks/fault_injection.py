"""What one misbehaving site does to a federation, and what the coordinator's defences keep.

One of three sites misbehaves on purpose (``faults`` in the experiment): its update has a NaN
(``nan``), is random weights of the right shapes (``random``), or is its honest change to the global
model multiplied by 100 (``scale:100``). Each fault runs with plain FedAvg (the norm guard off:
only the checks every update gets, which already reject NaN), with the norm guard (reject above
5x the round's median distance), and with the coordinate-wise median. The table
gives the final global model's test Dice over all sites' test cases next to the clean run's, and
the difference. Same seed, data and budget everywhere; rounds that lose the faulty site go on with
the other two (``min_responses = 2``).

Run:  .venv/bin/python benchmarks/fault_injection.py            # the demo's 3 synthetic sites
      .venv/bin/python benchmarks/fault_injection.py --hippocampus [--rounds 10]   # needs ../shared/data
      .venv/bin/python benchmarks/fault_injection.py --quick       # a smoke run
Prints the table; never asserts.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from fedseg.experiment import Experiment, load_experiment
from fedseg.runtime.intake import GuardConfig
from fedseg.runtime.round_policy import RoundPolicy

ROOT = Path(__file__).resolve().parents[1]
FAULTS = ("nan", "random", "scale:100")
DEFENCES = {
    "FedAvg, no guard": ({"name": "fedavg"}, "off"),
    "FedAvg + norm guard": ({"name": "fedavg"}, "reject"),
    "median": ({"name": "fedavg", "aggregator": "median"}, "off"),
}
"""(With three sites a trimmed mean that drops one site at each end is the median.)"""


def variant(base: Experiment, fault: str | None, plan: dict, guard: str) -> Experiment:
    faulty = base.sites[-1].name
    return dataclasses.replace(base, plan=plan, faults={faulty: fault} if fault else {},
                               guard=GuardConfig(norm_action=guard),
                               deployment=RoundPolicy(min_responses=len(base.sites) - 1))


def test_dice(experiment: Experiment, out: Path) -> float:
    from fedseg.simulate import run_simulation

    try:
        return run_simulation(experiment, out)["overall"]["mean_dice"]
    except Exception as exc:  # a run the fault stopped: say so in the table
        print(f"  ({out.name}: {type(exc).__name__}: {str(exc)[:120]})", flush=True)
        return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hippocampus", action="store_true", help="examples/hippocampus_fedavg.toml")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="demo data, 2 rounds, scale:100 only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.hippocampus:
            base = load_experiment(ROOT / "examples" / "hippocampus_fedavg.toml")
        else:
            from fedseg.demo import demo_experiment

            base = demo_experiment(tmp / "data", rounds=2 if args.quick else None, n_cases=24 if args.quick else None)
        rounds = args.rounds or base.federation.rounds
        base = dataclasses.replace(base, federation=dataclasses.replace(base.federation, rounds=rounds))
        faults = ("scale:100",) if args.quick else FAULTS
        defences = dict(list(DEFENCES.items())[:2]) if args.quick else DEFENCES
        started = time.perf_counter()
        clean = test_dice(variant(base, None, {"name": "fedavg"}, "reject"), tmp / "clean")
        print(f"{base.name}, {rounds} rounds, faulty site {base.sites[-1].name} of {len(base.sites)}; "
              f"clean FedAvg (guard on): test Dice {clean:.3f}", flush=True)
        print(f"| fault | {' | '.join(defences)} |")
        print("|---|" + "---|" * len(defences))
        for fault in faults:
            cells = []
            for name, (plan, guard) in defences.items():
                dice = test_dice(variant(base, fault, plan, guard), tmp / f"{fault}-{name}".replace(" ", "_"))
                cells.append(f"{dice:.3f} ({dice - clean:+.3f})")
            print(f"| {fault} | {' | '.join(cells)} |", flush=True)
        print(f"(test Dice of the final global model, difference to the clean run in brackets; "
              f"{time.perf_counter() - started:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
