"""A site of many CT-sized volumes: peak memory of training a 3D U-Net on patches, and how many NIfTI
files a second run opens.

``--cases`` generated int16 NIfTI volumes (default 300 of 512x512x120, spacing 0.8x0.8x2.5, RAS: air,
an abdomen-like body ellipse, an organ ellipsoid labelled 1; ``datagen.write_3d_site``) are written
to ``--dir`` once (existing files are reused; ``.nii`` by default, ``--gz`` for ``.nii.gz``; 300
uncompressed volumes take ~19 GB). ``fedseg simulate`` then trains a 3D U-Net on 96x96x32 patches
(spacing 1.6x1.6x2.5, 1 round of ``--local-steps`` steps, batch 2, only the federated arm, no
validation split, a small test split), twice: a second run with another ``--out`` and the same
``FEDSEG_CACHE``. Each run is a fresh child (``childproc``) that runs fedseg's CLI ``main``
in-process; ``open_audit/sitecustomize.py`` (on the child's ``PYTHONPATH``) installs an audit hook
in it and in every worker process it starts, logging every ``open`` of a ``.nii``/``.nii.gz`` path.
Printed per run: wall time, peak RSS of the run's process and of its largest worker (``ru_maxrss``),
the peak of the process tree's summed RSS (psutil, sampled every 0.1 s), and the NIfTI files opened
(by the run's process, by its workers). The issue's targets: peak < 4 GB; the second run opens 0.

Run:  .venv/bin/python benchmarks/big_site.py --dir /path/with/20GB [--cases 300] [--cache DIR]
      [--local-steps 4] [--gz] [--fedseg-src DIR];  develop with --cases 6 (or --quick: small volumes).

Measured 2026-11-27 on 2 shared CPU cores (load average 2.5-4.4), ``--cases 6`` (512x512x120 .nii,
5 training cases, 1 test case, 4 steps), one run each; the 300-case run is not measured yet.
  before = commit 554d48b (no cache), after = the working tree at 01:46 UTC (the cache, 0677447 on)
               wall s  training s  peak RSS run MB  tree peak MB  NIfTI opens (distinct files)
  before, 1st    77       2.7         2738             2697          48 (12)
  before, 2nd    77       2.6         2760             2745          48 (12)
  after, 1st     65       2.9         1027             1027          48 (12)
  after, 2nd     55       3.0         1096             1064           0 (0)
(48 opens = 4 per file: fedseg opens each NIfTI file several times while reading and checking it.)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.childproc import run_child  # noqa: E402
from benchmarks.datagen import write_3d_site  # noqa: E402
from benchmarks.simulate_child import SIMULATE_CHILD, write_toml  # noqa: E402

AUDIT = Path(__file__).resolve().parent / "open_audit"


def experiment(root: Path, cases: int, local_steps: int, patch: list[int]) -> dict:
    test = max(1, min(6, cases // 50)) / cases  # a few test cases: the run ends with a whole-volume test
    return {"name": "big_site", "seed": 0, "arms": ["federated"],
            "task": {"labels": {"background": 0, "organ": 1}, "spatial_dims": 3, "in_channels": 1},
            "sites": [{"name": "big", "path": str(root)}],
            "splits": {"train": round(1.0 - test, 6), "val": 0.0, "test": round(test, 6)},
            "preprocessing": {"orientation": "RAS", "spacing": [1.6, 1.6, 2.5], "intensity": "clip_rescale",
                              "clip": [-200, 250], "patch_size": patch, "flip": True, "rotate90": True},
            "model": {"name": "UNet", "channels": [16, 32, 64, 128], "num_res_units": 1},
            "training": {"loss": "dice_ce", "optimizer": "adam", "lr": 1e-3, "batch_size": 2,
                         "local_steps": local_steps},
            "federation": {"rounds": 1, "validate_global": False}, "plan": {"name": "fedavg"}}


def run_once(toml: Path, out: Path, cache: Path, log: Path, src: str | None) -> dict:
    log.unlink(missing_ok=True)
    path = os.pathsep.join(p for p in (str(AUDIT), src or "") if p)
    result = run_child(SIMULATE_CHILD, [toml, out],
                       env={"FEDSEG_CACHE": str(cache), "FEDSEG_BENCH_OPEN_LOG": str(log), "PYTHONPATH": path})
    lines = log.read_text().splitlines() if log.exists() else []
    by_pid = Counter(line.split(" ", 1)[0] for line in lines)
    result["opens"] = len(lines)
    result["opens_main"] = by_pid.get(str(result["pid"]), 0) if "pid" in result else None
    result["open_pids"] = len(by_pid)
    result["open_files"] = len({line.split(" ", 1)[1] for line in lines})
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="where the volumes are written (and reused); default: a temporary folder")
    parser.add_argument("--cases", type=int, default=None, help="volumes (default 300; 6 with --quick)")
    parser.add_argument("--shape", type=int, nargs=3, default=None, help="volume shape (default 512 512 120)")
    parser.add_argument("--gz", action="store_true", help="write .nii.gz instead of .nii")
    parser.add_argument("--local-steps", type=int, default=4, help="optimizer steps of the one round (default 4)")
    parser.add_argument("--cache", type=Path, help="FEDSEG_CACHE of both runs (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="6 small volumes (128x128x40), 32x32x16 patches")
    parser.add_argument("--fedseg-src", help="fedseg src folder to measure instead of the installed one")
    args = parser.parse_args(argv)
    cases = args.cases or (6 if args.quick else 300)
    shape = tuple(args.shape or ((128, 128, 40) if args.quick else (512, 512, 120)))
    patch = [32, 32, 16] if args.quick else [96, 96, 32]
    with tempfile.TemporaryDirectory(prefix="fedseg-big-site-") as tmp:
        work = Path(tmp)
        root = (args.dir.resolve() if args.dir else work / "data") / f"big_{'x'.join(map(str, shape))}"
        cache = args.cache.resolve() if args.cache else work / "cache"
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; fedseg from "
              f"{args.fedseg_src or 'the installed source'}; volumes in {root}; FEDSEG_CACHE={cache}")
        started = time.perf_counter()
        write_3d_site(root, cases, shape=shape, seed=3, compressed=args.gz, log=print)
        print(f"{cases} volumes of {'x'.join(map(str, shape))} ready ({time.perf_counter() - started:.0f} s)")
        toml = write_toml(experiment(root, cases, args.local_steps, patch), work / "big_site.toml")
        print("| run | wall s | training s | peak RSS run (MB) | largest worker (MB) | process tree peak (MB) "
              "| NIfTI opens (run process / all) | distinct NIfTI files | processes that opened one |")
        print("|---|---|---|---|---|---|---|---|---|")
        for index, name in enumerate(("first (empty cache)", "second (same cache)")):
            r = run_once(toml, work / f"run{index}", cache, work / f"opens{index}.log", args.fedseg_src)
            print(f"| {name} | {r['wall_s']:.0f} | {r['seconds']:.1f} | {r['rss_mb']:.0f} | {r['children_rss_mb']:.0f} "
                  f"| {r['tree_peak_mb']:.0f} | {r['opens_main']} / {r['opens']} | {r['open_files']} | {r['open_pids']} |", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}; targets: peak < 4096 MB, second run opens 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
