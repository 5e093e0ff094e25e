"""What differential privacy costs a federation, and what it buys against a membership attack.

The same federation is trained without DP and with sample-level DP (DP-SGD at every site, each
case a privacy unit) at several target epsilons (delta = 1e-5 per site), under the same budget
(rounds, local epochs, data, seed). The table gives the final global model's test Dice over all
sites' test cases, its ratio to the non-private run, the largest epsilon any site spent, and the
loss-threshold membership-inference attack's AUC (each site's training vs test cases, mean over
sites; 0.5 = the attack cannot tell members from non-members).

Run:  .venv/bin/python benchmarks/privacy_dp.py                  # the demo's 3 synthetic sites
      .venv/bin/python benchmarks/privacy_dp.py --hippocampus [--rounds 10] [--device cuda]
      .venv/bin/python benchmarks/privacy_dp.py --quick          # a smoke run
Prints the table; never asserts.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path

from fedseg.experiment import Experiment, load_experiment
from fedseg.privacy.config import PrivacyConfig

ROOT = Path(__file__).resolve().parents[1]


def variant(base: Experiment, epsilon: float | None, max_grad_norm: float, batch_size: int | None) -> Experiment:
    privacy = PrivacyConfig() if epsilon is None else PrivacyConfig(dp="sample", epsilon=epsilon, delta=1e-5,
                                                                    max_grad_norm=max_grad_norm)
    training = dataclasses.replace(base.training, batch_size=batch_size or base.training.batch_size)
    return dataclasses.replace(base, privacy=privacy, training=training)


def parse_run(text: str) -> tuple[float | None, int | None]:
    """``EPSILON[:BATCH]`` (``none`` for no DP), e.g. ``8:16``."""
    epsilon, _, batch = text.partition(":")
    return (None if epsilon == "none" else float(epsilon)), (int(batch) if batch else None)


def run(experiment: Experiment, out: Path) -> dict:
    from fedseg.simulate import run_simulation

    started = time.perf_counter()
    try:
        results = run_simulation(experiment, out)
    except Exception as exc:  # a run DP made impossible (e.g. delta >= 1/cases): say so in the table
        print(f"  ({out.name}: {type(exc).__name__}: {str(exc)[:160]})", flush=True)
        return {"dice": math.nan, "spent": math.nan, "auc": math.nan, "seconds": time.perf_counter() - started}
    privacy = results["privacy"]
    aucs = [a for a in privacy["membership_auc"].values() if a is not None and not math.isnan(a)]
    return {"dice": results["overall"]["mean_dice"], "spent": max(privacy["epsilon"].values(), default=math.nan),
            "auc": sum(aucs) / len(aucs) if aucs else math.nan, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hippocampus", action="store_true", help="examples/hippocampus_fedavg.toml")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--runs", nargs="+", default=["none", "1", "4", "8"],
                        help="EPSILON[:BATCH] per run, 'none' without DP; BATCH overrides [training] batch_size")
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--device", default=None, help="training.device, e.g. cuda")
    parser.add_argument("--channels", type=int, nargs="+", default=None, help="[model] channels (a smaller U-Net)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds on tiny synthetic sites")
    parser.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="fedseg-dp-"))
    if args.hippocampus:
        base = load_experiment(ROOT / "examples" / "hippocampus_fedavg.toml")
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_experiment import tiny_experiment

        from fedseg.experiment import parse_experiment

        base = parse_experiment(tiny_experiment(out / "data", rounds=2 if args.quick else 10,
                                                n_cases=10 if args.quick else 40))
    federation = dataclasses.replace(base.federation, rounds=args.rounds or base.federation.rounds)
    training = dataclasses.replace(base.training, device=args.device or base.training.device)
    model = dataclasses.replace(base.model, channels=tuple(args.channels)) if args.channels else base.model
    base = dataclasses.replace(base, federation=federation, training=training, model=model)
    runs = [parse_run(text) for text in (args.runs[:2] if args.quick else args.runs)]
    rows = []
    for epsilon, batch in runs:
        name = ("no DP" if epsilon is None else f"epsilon {epsilon:g}") + f", batch {batch or base.training.batch_size}"
        print(f"running {name} ...", flush=True)
        rows.append((name, run(variant(base, epsilon, args.max_grad_norm, batch),
                               out / name.replace(" ", "_").replace(",", ""))))
        print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[-1][1].items()), flush=True)
    clean = rows[0][1]["dice"]
    print(f"\n{base.name}: {federation.rounds} rounds, {base.training.local_epochs} local epoch(s), "
          f"max_grad_norm {args.max_grad_norm:g}, delta 1e-5, device {training.device}, channels {model.channels}")
    print(f"{'run':<24}{'test Dice':>10}{'of first':>10}{'eps spent':>11}{'attack AUC':>12}{'seconds':>9}")
    for name, row in rows:
        print(f"{name:<24}{row['dice']:>10.3f}{row['dice'] / clean:>10.1%}{row['spent']:>11.2f}{row['auc']:>12.3f}"
              f"{row['seconds']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
