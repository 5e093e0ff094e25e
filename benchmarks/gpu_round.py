"""How much faster is one round of the hippocampus example on a GPU than on the CPU?

One round of ``examples/hippocampus_fedavg.toml`` as ``fedseg simulate`` runs it: its 3D U-Net
(16-32-64-128, 2 residual units, instance norm), 40 x 56 x 40 volumes, Dice+CE, Adam lr 2e-3,
batch 2, 2 local epochs, FedAvg over 3 sites (``shard = [i, 3]`` of one pooled folder, 70/10/20
splits), each site validating its local model and the global model validated at every site: the
round engine over the site apps ``study.site_app`` builds, with ``[training] device`` set per
variant. The MSD data is not needed (the GPU machine reaches no network): synthetic cases of the
same size (``benchmarks/dp_step.write_cases``: a bright sphere in a shell) cost the same per step.

Variants: ``cpu``; when CUDA is visible, ``auto`` (site i on ``cuda:(i mod n)``) and ``auto``
with ``amp = true``. Each variant runs one warm-up round (not timed; first-call costs, cuDNN's
set-up), then ``--repeats`` timed rounds from the same initial weights; medians are reported.
``retraced`` says whether every timed round's global model equals the warm-up's bit for bit (the
per-device reproducibility that resume relies on: ``training/devices.py``), else the largest
difference. Prints seconds per round and the GPU/CPU time ratio; never asserts on time. Without a
GPU it times the CPU alone and says so.

Run:  .venv/bin/python benchmarks/gpu_round.py            # on the GPU machine: the ratio
      .venv/bin/python benchmarks/gpu_round.py --quick    # a smoke run (a tiny U-Net, seconds)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("GOMP_SPINCOUNT", "10000")  # as simulation_overhead.py: shared cores, fair timings

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import numpy as np  # noqa: E402

from benchmarks.dp_step import SIZE, write_cases  # noqa: E402

EXAMPLE = ROOT / "examples" / "hippocampus_fedavg.toml"
CASES_PER_SITE = 87  # 260 MSD cases over 3 sites: 61 train, 9 val, 17 test each


def experiment_for(data: Path, quick: bool, device: str, amp: bool):
    from fedseg.experiment import parse_experiment
    from fedseg.tables import read_toml

    table = read_toml(EXAMPLE)
    for site in table["sites"]:
        site["path"] = str(data)
    table["federation"]["rounds"] = 1
    table["training"].update(device=device, amp=amp)
    if quick:
        table["preprocessing"]["spatial_size"] = [16, 16, 16]
        table["model"].update(channels=[4, 8], num_res_units=1)
        table["training"]["local_epochs"] = 1
    return parse_experiment(table, source=EXAMPLE)


def time_rounds(experiment, repeats: int, root: Path) -> tuple[list[float], str, str]:
    """(seconds of each timed round, where the sites trained, retraced)."""
    from fedseg.runtime.run_directory import RunDirectory
    from fedseg.runtime.simulation import simulation_engine
    from fedseg.study import initial_weights, load_sites, site_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # amp on a CPU-only variant: said once in the table instead
        apps = {name: site_app(experiment, data) for name, data in load_sites(experiment).items()}
    placed = ",".join(str(app.trainer.device) for app in apps.values())
    start, seconds, models = initial_weights(experiment), [], []
    for repeat in range(repeats + 1):  # round 0 warms up
        run_dir = RunDirectory(root / f"{experiment.training.device}-{experiment.training.amp}-{repeat}")
        run_dir.create()
        plan = experiment.compute_plan()
        engine = simulation_engine(plan, apps, run_dir, validate_global=experiment.federation.validate_global,
                                   policy=experiment.deployment, guard=experiment.guard)
        began = time.perf_counter()
        models.append(engine.run(start, plan.total_rounds))
        if repeat:
            seconds.append(time.perf_counter() - began)
    gap = max(float(np.abs(models[0][k].astype(np.float64) - m[k]).max()) for m in models[1:] for k in m)
    return seconds, placed, "yes" if gap == 0 else f"{gap:.1e}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny volumes and U-Net, 1 repeat")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds per variant (default 2)")
    parser.add_argument("--cases", type=int, default=CASES_PER_SITE, help="cases per site (default 87)")
    args = parser.parse_args(argv)

    import torch

    repeats, cases = (1, 6) if args.quick else (args.repeats, args.cases)
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(n_gpus)) or "none"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, {os.cpu_count()} CPUs, "
          f"CUDA GPUs: {gpus}")
    variants = [("cpu", False)] + ([("auto", False), ("auto", True)] if n_gpus else [])
    rows = {}
    with tempfile.TemporaryDirectory(prefix="fedseg-gpu-round-") as tmp:
        data = Path(tmp) / "hippocampus"
        write_cases(data, 3 * cases, (16, 16, 16) if args.quick else SIZE)
        for device, amp in variants:
            experiment = experiment_for(data, args.quick, device, amp)
            if not rows:
                t = experiment.training
                print(f"one round of {EXAMPLE.name}: 3 sites x {cases} synthetic cases of "
                      f"{tuple(experiment.preprocessing.spatial_size)}, U-Net {list(experiment.model.channels)}, "
                      f"batch {t.batch_size}, {t.local_epochs} local epochs, validate_global "
                      f"{experiment.federation.validate_global}; {repeats} timed round(s) after a warm-up")
                print(f"| {'variant':<10} | {'sites on':<22} | {'s/round':>8} | {'min':>7} | {'max':>7} | retraced |")
            seconds, placed, retraced = time_rounds(experiment, repeats, Path(tmp) / "runs")
            name = device + ("+amp" if amp else "")
            rows[name] = statistics.median(seconds)
            print(f"| {name:<10} | {placed:<22} | {rows[name]:>8.2f} | {min(seconds):>7.2f} | {max(seconds):>7.2f} "
                  f"| {retraced:>8} |", flush=True)
    if not n_gpus:
        print("no CUDA GPU visible: the CPU alone was timed (run this on a GPU machine for the GPU/CPU ratio)")
        return 0
    for name in ("auto", "auto+amp"):
        print(f"GPU/CPU time ratio ({name} / cpu): {rows[name] / rows['cpu']:.3f}  "
              f"(the GPU round is {rows['cpu'] / rows[name]:.1f}x faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
