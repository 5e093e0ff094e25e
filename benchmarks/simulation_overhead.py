"""What does fedseg's simulation runtime cost on top of the training it runs?

Two ways of doing the same optimisation work are timed against each other:

(a) plain: a hand-written PyTorch/MONAI loop -- one network from
    ``fedseg.training.trainer.build_site_network``, the experiment's loss, Adam, and for every
    (round, site) the batches of ``SiteDataset.train_loader`` with the seed FedAvg would give
    that site in that round. No fedseg runtime, plan, trainer or run directory.
(b) runtime: the round engine over in-process site apps (``simulation_engine`` and ``SiteApp``,
    as ``fedseg simulate`` runs them) with the FedAvg plan over 3 synthetic sites, ``local_steps``
    per site and round, ``validate_global`` off and no validation split, the experiment's default
    update checks and norm guard, writing its run directory (a checkpoint, metrics lines and the
    audit log after every round) as a real run does.

Both take exactly the same number of optimizer steps on exactly the same batches, so the
difference is what federation costs in simulation: copying weights between torch and numpy,
the site's check of the global model and the engine's checks of every update (names, shapes,
dtypes, finite values, norms), averaging, a fresh optimizer per site and round, and the
per-round checkpoint, metrics and audit lines.
Runs alternate in order (a b, b a, ...) and medians are reported, because the machine may be
shared; the script prints ratios and never asserts on time. Between runs the noise is a few
percent (2 shared cores), more than the overhead itself, so inside (b) the time spent in the
sites' trainers' ``train`` calls is measured too: the runtime's own share (site app, engine,
plan, run directory) is read off each run, free of the noise between runs.

On 2 shared CPU cores (2026-11-25, default sizes) the ratio of medians was 0.998, 1.032 and
1.044 in three invocations (noise, both ways), while the runtime's own time was steadily about
0.4 % of the training (~11 ms per round). Through the round engine (2026-11-26, with its checks
of every model and update, on the same cores under a load average of 4-22 from other work, which
made the plain loop 3-15x slower than the day before): ratios of medians 1.145 and 0.802 (noise),
the runtime's own time 0.23 % and 0.29 % of the plain loop (30 and 35 ms per round).

Run:  .venv/bin/python benchmarks/simulation_overhead.py [--quick] [--repeats N] ...
The data is the built-in synthetic 2D demo data, written to a temporary folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Before torch starts OpenMP (libgomp): idle OpenMP threads spin only briefly, then sleep. With
# the default long spin, two torch processes on a shared 2-core machine made every training step
# about 10x slower (2.0 s vs 0.2 s for a 3D U-Net step) and the timings useless; with a spin
# count of 10000 an idle machine is as fast as with the default. Both sides get the same
# setting; set GOMP_SPINCOUNT yourself to measure something else.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import torch  # noqa: E402
from monai.data.meta_tensor import MetaTensor

from fedseg.data.synthetic import write_demo_sites
from fedseg.experiment import Experiment, parse_experiment
from fedseg.runtime.run_directory import RunDirectory
from fedseg.runtime.simulation import simulation_engine
from fedseg.runtime.site_app import SiteApp
from fedseg.seeding import stable_seed
from fedseg.study import initial_weights, load_sites
from fedseg.training.losses import build_loss
from fedseg.training.trainer import SiteTrainer, build_site_network
from fedseg.training.weights import set_weights
from fedseg.types import RoundConfig, Update, Weights

FULL = dict(cases=40, size=96, rounds=4, local_steps=20, batch_size=8, repeats=7)
QUICK = dict(cases=6, size=32, rounds=2, local_steps=2, batch_size=2, repeats=1)


def make_experiment(data_dir: Path, cases: int, size: int, rounds: int, local_steps: int,
                    batch_size: int, seed: int = 0) -> Experiment:
    sites = write_demo_sites(data_dir, n_cases=cases, size=size, seed=seed)
    return parse_experiment({
        "name": "overhead",
        "seed": seed,
        "task": {"labels": {"background": 0, "lesion": 1}, "spatial_dims": 2, "in_channels": 1},
        "sites": [{"name": name, "path": str(path.resolve())} for name, path in sites.items()],
        "splits": {"train": 1.0, "val": 0.0, "test": 0.0},  # nothing to validate: both sides only train
        "preprocessing": {"intensity": "percentile_rescale", "flip": True, "rotate90": True},
        "model": {"name": "UNet", "channels": [16, 32, 64, 128], "num_res_units": 1},
        "training": {"loss": "dice_ce", "lr": 2e-3, "batch_size": batch_size, "local_steps": local_steps},
        "federation": {"rounds": rounds, "validate_global": False},
        "plan": {"name": "fedavg"},
    })


def _plain_tensor(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.as_tensor() if isinstance(tensor, MetaTensor) else tensor


def run_plain(experiment: Experiment, datasets: dict) -> tuple[float, int]:
    """(a) One network, one Adam, the same batches in the same order; returns (seconds, steps)."""
    started = time.perf_counter()
    training = experiment.training
    network = build_site_network(experiment.model, experiment.task, training.loss)
    set_weights(network, initial_weights(experiment))  # same start as the runtime, outside the loop
    network.train()
    loss_fn = build_loss(training.loss, experiment.task.n_classes)
    optimizer = torch.optim.Adam(network.parameters(), lr=training.lr, weight_decay=training.weight_decay)
    steps = 0
    for round in range(experiment.federation.rounds):
        for site in sorted(datasets):
            seed = stable_seed(experiment.seed, "train", round, site)  # FedAvg's per-site round seed
            torch.manual_seed(seed)
            loader = datasets[site].train_loader(training.batch_size, seed)
            cycles = math.ceil(training.local_steps / len(loader))
            batches = itertools.islice(itertools.chain.from_iterable(loader for _ in range(cycles)),
                                       training.local_steps)
            for batch in batches:
                image, label = _plain_tensor(batch["image"]), _plain_tensor(batch["label"])
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(network(image), label)
                loss.backward()
                optimizer.step()
                float(loss.detach())  # the trainer reads every loss too
                steps += 1
    return time.perf_counter() - started, steps


class TimedTrainer:
    """A site trainer (``runtime.site_app.Trainer``) that forwards to a SiteTrainer and adds up
    the seconds spent in ``train``."""

    def __init__(self, trainer: SiteTrainer):
        self.trainer = trainer
        self.seconds = 0.0
        self.steps = 0

    def train(self, weights: Weights, config: RoundConfig) -> Update:
        started = time.perf_counter()
        update = self.trainer.train(weights, config)
        self.seconds += time.perf_counter() - started
        self.steps += int(update.metrics["steps"])
        return update

    def evaluate(self, weights: Weights, split: str = "test"):
        return self.trainer.evaluate(weights, split)

    def case_counts(self) -> dict[str, int]:
        return self.trainer.case_counts()

    def weights(self) -> Weights:
        return self.trainer.weights()


def run_runtime(experiment: Experiment, datasets: dict, run_root: Path) -> tuple[float, int, float]:
    """(b) The round engine over site apps + FedAvg; returns (seconds, steps, seconds inside the
    sites' trainers' train)."""
    started = time.perf_counter()
    trainers = {name: TimedTrainer(SiteTrainer(data, experiment.model, experiment.training))
                for name, data in datasets.items()}
    apps = {name: SiteApp(name, trainer) for name, trainer in trainers.items()}
    run_dir = RunDirectory(run_root)
    run_dir.create()
    plan = experiment.compute_plan()
    engine = simulation_engine(plan, apps, run_dir, validate_global=experiment.federation.validate_global,
                               policy=experiment.deployment, guard=experiment.guard)
    engine.run(initial_weights(experiment), plan.total_rounds)
    seconds = time.perf_counter() - started
    return seconds, sum(t.steps for t in trainers.values()), sum(t.seconds for t in trainers.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a very short smoke run (seconds)")
    for key, value in FULL.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None,
                            help=f"default {value} ({QUICK[key]} with --quick)")
    args = parser.parse_args(argv)
    settings = {k: (getattr(args, k) if getattr(args, k) is not None else (QUICK if args.quick else FULL)[k])
                for k in FULL}

    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
          f"{os.cpu_count()} CPUs, GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    with tempfile.TemporaryDirectory(prefix="fedseg-overhead-") as tmp:
        tmp = Path(tmp)
        experiment = make_experiment(tmp / "data", settings["cases"], settings["size"], settings["rounds"],
                                     settings["local_steps"], settings["batch_size"])
        datasets = load_sites(experiment)
        n_sites = len(datasets)
        expected = n_sites * settings["rounds"] * settings["local_steps"]
        print(f"{n_sites} sites x {settings['cases']} cases of {settings['size']}x{settings['size']}, "
              f"{settings['rounds']} rounds x {settings['local_steps']} local steps, batch "
              f"{settings['batch_size']}: {expected} optimizer steps per run, {settings['repeats']} repeats")

        # warm-up (first-call costs of torch and MONAI), not timed
        warm = dataclasses.replace(experiment, federation=dataclasses.replace(experiment.federation, rounds=1))
        run_plain(warm, datasets)
        run_runtime(warm, datasets, tmp / "warmup")

        plain, runtime, inside = [], [], []
        for repeat in range(settings["repeats"]):
            order = ("plain", "runtime") if repeat % 2 == 0 else ("runtime", "plain")
            for which in order:
                if which == "plain":
                    seconds, steps = run_plain(experiment, datasets)
                    plain.append(seconds)
                else:
                    seconds, steps, in_train = run_runtime(experiment, datasets, tmp / f"run{repeat}")
                    runtime.append(seconds)
                    inside.append(in_train)
                if steps != expected:
                    print(f"error: {which} took {steps} steps, expected {expected}", file=sys.stderr)
                    return 1
            print(f"  repeat {repeat + 1}: plain {plain[-1]:.3f} s, runtime {runtime[-1]:.3f} s "
                  f"(ratio {runtime[-1] / plain[-1]:.3f}; order {' then '.join(order)})")

    plain_s, runtime_s = statistics.median(plain), statistics.median(runtime)
    ratio = runtime_s / plain_s
    own = [total - in_train for total, in_train in zip(runtime, inside)]
    own_s = statistics.median(own)
    print(f"median plain loop:     {plain_s:.3f} s  (min {min(plain):.3f}, max {max(plain):.3f})")
    print(f"median fedseg runtime: {runtime_s:.3f} s  (min {min(runtime):.3f}, max {max(runtime):.3f})")
    print(f"ratio runtime/plain (medians): {ratio:.4f}  -> overhead {100 * (ratio - 1):+.2f} %")
    print(f"median of per-repeat ratios: {statistics.median(r / p for r, p in zip(runtime, plain)):.4f}")
    print(f"runtime's own time outside site training (site app, engine, plan, run directory), median: {own_s:.3f} s "
          f"= {100 * own_s / plain_s:.2f} % of the plain loop; "
          f"{1000 * own_s / settings['rounds']:.1f} ms per round")
    return 0


if __name__ == "__main__":
    sys.exit(main())
