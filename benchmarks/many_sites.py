"""How does a simulation's memory grow with the number of sites?

A simulation of 2, 20 and 100 small synthetic 2D sites (``fedseg.data.synthetic``, the demo's
three acquisition styles in turn, 5 cases of 32x32 pixels each), run by
``fedseg.simulate.run_simulation`` with the federated and centralized arms (the standalone arm's
models are scored on every site: quadratic in the number of sites, left out) for one round of a
few steps, each size in a child process of its own that reports its peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and how many networks it built (constructions of
MONAI networks counted, the benchmark's own one for the model's size included). The report's
pictures and pages are not drawn (they cost time per site and are not what is measured). The
child's ``FEDSEG_CACHE`` is a temporary folder.

Printed side by side: peak MB, MB per extra site (from the smallest run) and networks built.

Measured on 2 shared CPU cores (2026-11-27, load average 6-18 from other work, which changes times
but not memory), default sizes, UNet (16, 32, 64, 128) with 2 residual units (1.53 MB of float32),
both from commit 18539cf (the data layer as committed then), wall time 6-11 min per invocation:

    before: a network per site app (the federation's, the centralized arm's, the scoring apps'),
    and each site app keeping a copy of the weights as its template
    | sites | peak RSS MB | MB per extra site | networks built |
    | 2     | 529         | -                 | 7              |
    | 20    | 650         | 6.71              | 43             |
    | 100   | 1177        | 6.62              | 203            |

    after: one network per kind in the process (``training.networks``), site apps keeping only
    shapes and dtypes
    | sites | peak RSS MB | MB per extra site | networks built |
    | 2     | 523         | -                 | 4              |
    | 20    | 554         | 1.73              | 4              |
    | 100   | 682         | 1.62              | 5              |

The networks left are the initial weights', the benchmark's own, and the shared one, built again
when an arm's trainers are all gone (a pool holds its networks weakly). What a site still costs
(1.6 MB here) is its data, its trainer and site app objects, and its run records.

Run:  .venv/bin/python benchmarks/many_sites.py [--quick] [--sites 2 20 100] [--cases N] [--size N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

FULL = dict(sites=[2, 20, 100], cases=5, size=32, steps=2)
QUICK = dict(sites=[2, 6], cases=5, size=32, steps=1)
CHANNELS = [16, 32, 64, 128]


def child(n_sites: int, cases: int, size: int, steps: int, root: Path) -> dict:
    """Run the simulation here (in the child process) and return what it measured."""
    import resource

    import monai.networks.nets as nets

    import fedseg.simulate as simulate
    from fedseg.data.synthetic import DEMO_SITES, write_site
    from fedseg.experiment import parse_experiment
    from fedseg.study import initial_weights

    built = {"networks": 0}
    for name in ("UNet", "BasicUNet", "SegResNet"):
        cls = getattr(nets, name)

        def counting(self, *args, _cls=cls, _original=cls.__init__, **kwargs):
            built["networks"] += type(self) is _cls  # a whole network, not a part of one
            _original(self, *args, **kwargs)

        cls.__init__ = counting
    sites = []
    for i in range(n_sites):
        style = dataclasses.replace(DEMO_SITES[i % len(DEMO_SITES)], name=f"site{i:03d}")
        sites.append({"name": style.name, "path": str(write_site(root / "data" / style.name, style, cases, size, i))})
    experiment = parse_experiment({
        "name": "many_sites", "seed": 0, "arms": ["federated", "centralized"],
        "task": {"labels": {"background": 0, "lesion": 1}, "spatial_dims": 2},
        "sites": sites, "splits": {"train": 0.6, "val": 0.2, "test": 0.2},
        "preprocessing": {"intensity": "percentile_rescale"},
        "model": {"name": "UNet", "channels": CHANNELS, "num_res_units": 2},
        "training": {"loss": "dice_ce", "lr": 1e-3, "batch_size": 2, "local_steps": steps, "device": "cpu"},
        "federation": {"rounds": 1},
    })
    simulate.write_report = lambda root: None
    simulate._draw_examples = lambda *args: None
    simulate.run_simulation(experiment, root / "run")
    model_mb = sum(v.nbytes for v in initial_weights(experiment).values()) / 2**20
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    return {"sites": n_sites, "model_mb": model_mb, "peak_mb": peak_mb,
            "networks": built["networks"]}


def measure(n_sites: int, cases: int, size: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "FEDSEG_CACHE": str(Path(tmp) / "cache"), "GOMP_SPINCOUNT": "10000"}
        command = [sys.executable, __file__, "--child", str(n_sites), str(cases), str(size), str(steps), tmp]
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode:
            raise SystemExit(f"the run with {n_sites} sites failed:\n{result.stdout[-2000:]}{result.stderr[-4000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 and 6 sites, one step: a smoke run")
    parser.add_argument("--sites", type=int, nargs="+")
    parser.add_argument("--cases", type=int)
    parser.add_argument("--size", type=int)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        n, cases, size, steps, root = args.child
        print(json.dumps(child(int(n), int(cases), int(size), int(steps), Path(root))))
        return
    settings = dict(QUICK if args.quick else FULL)
    settings.update({k: v for k, v in (("sites", args.sites), ("cases", args.cases), ("size", args.size)) if v})
    rows = [measure(n, settings["cases"], settings["size"], settings["steps"]) for n in sorted(settings["sites"])]
    print(f"{settings['cases']} cases of {settings['size']}x{settings['size']} per site, UNet {CHANNELS} "
          f"({rows[0]['model_mb']:.2f} MB), "
          f"{settings['steps']} step(s), federated + centralized arms")
    print("| sites | peak RSS MB | MB per extra site | networks built |")
    print("|---|---|---|---|")
    first = rows[0]
    for row in rows:
        extra = row["sites"] - first["sites"]
        per_site = f"{(row['peak_mb'] - first['peak_mb']) / extra:.2f}" if extra else "-"
        print(f"| {row['sites']} | {row['peak_mb']:.0f} | {per_site} | {row['networks']} |")


if __name__ == "__main__":
    main()
