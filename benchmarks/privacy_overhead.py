"""What secure aggregation and homomorphic encryption add to a round of real training.

The same federation (3 synthetic 2D sites, a U-Net of 8.2M parameters, ``--steps`` local steps of
batch 4 per round) runs in simulation without protection, with pairwise masks and with CKKS; the
table gives the median round time over the rounds (training, protocol, aggregation, checkpoint)
and the ratio to the plain run. Simulation runs the sites one after another on the same cores, so
every site's masking or encryption is on the round's critical path: a deployment, where the sites
work in parallel on their own machines, pays about a third of the sites' part.

Run:  .venv/bin/python benchmarks/privacy_overhead.py [--rounds 3] [--steps 10]
      .venv/bin/python benchmarks/privacy_overhead.py --quick     # a smoke run (tiny model)
Prints the table; never asserts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"tiny": {"channels": [4, 8, 16], "num_res_units": 1},
          "8M": {"channels": [36, 72, 144, 288, 576], "num_res_units": 2}}
VARIANTS = {"plain FedAvg": {}, "secure aggregation": {"secure_aggregation": True},
            "homomorphic (CKKS)": {"homomorphic": True}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_experiment import tiny_experiment

    from fedseg.experiment import parse_experiment
    from fedseg.runtime.run_directory import RunDirectory
    from fedseg.simulate import run_simulation
    from fedseg.study import initial_weights

    out = Path(tempfile.mkdtemp(prefix="fedseg-privacy-overhead-"))
    model = MODELS["tiny" if args.quick else "8M"]
    rows = []
    for name, privacy in VARIANTS.items():
        experiment = parse_experiment(tiny_experiment(
            out, rounds=1 if args.quick else args.rounds, n_cases=10, model=model, guard={"norm_action": "off"},
            training={"local_steps": 1 if args.quick else args.steps, "validate_local": False},
            federation={"validate_global": False}, privacy={**privacy, "membership_attack": False}))
        run_dir = out / name.replace(" ", "_")
        run_simulation(experiment, run_dir)
        seconds = [r["round_seconds"] for r in RunDirectory(run_dir).read_metrics() if "round_seconds" in r]
        rows.append((name, statistics.median(seconds)))
        print(f"{name}: rounds {[round(s, 2) for s in seconds]}", flush=True)
    parameters = sum(int(v.size) for v in initial_weights(experiment).values())
    steps = 1 if args.quick else args.steps
    print(f"\n{parameters:,} parameters, 3 sites, {steps} local steps of batch 4 per round (simulation)")
    print(f"{'':<22}{'round (s)':>10}{'vs plain':>10}")
    for name, seconds in rows:
        print(f"{name:<22}{seconds:>10.2f}{seconds / rows[0][1]:>10.3f}")


if __name__ == "__main__":
    main()
