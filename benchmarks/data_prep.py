"""Data preparation (read, check, preprocess every case) of fedseg vs a plain PIL/nibabel loop.

(a) 2D: generated RGB PNG images (every fourth a JPEG) of mixed sizes up to 1920x1080 with 0/255
    PNG masks, ``--sites`` sites x ``--cases`` images (``datagen.write_2d_site``); fedseg prepares
    them with ``spatial_size = [128, 128]``, ``resize_mode = "resize"``, ``percentile_rescale``.
(b) 3D: generated int16 NIfTI volumes (``--volumes`` cases of ``--shape``, spacing 0.8x0.8x2.5,
    RAS), resampled by fedseg to spacing [1.6, 1.6, 2.5] with ``clip_rescale [-200, 250]``.
The plain loop (``plain_prep``) does the same work with PIL/nibabel, numpy and
``torch.nn.functional.interpolate`` and holds the results in memory. fedseg runs through its
public entry points (``parse_experiment``, ``study.load_sites``) twice: first with an empty
``FEDSEG_CACHE``, then again with the cache the first run left. Each measurement is a fresh child
process (torch and MONAI imported before the clock starts, on both sides); seconds are the child's
own time for the work, peak RSS its ``ru_maxrss`` (and of the workers it waited for) and the peak of
its process tree's summed RSS. Ratios fedseg/plain; the issue's target is <= 1.5x in time.

Run:  .venv/bin/python benchmarks/data_prep.py [--quick] [--cases 200] [--volumes 40] [--fedseg-src DIR]
(``--fedseg-src``: another fedseg ``src`` folder, e.g. an older commit's, see ``childproc``).

Measured 2026-11-27 on 2 shared CPU cores (load average 3.6; one repeat each, noisy: an earlier
pair of runs under load 11-19 gave 2-3x longer times), 2 x 200 images, 40 volumes of 256x256x64
(.nii.gz). "before" = commit 554d48b (no cache: everything read and held in memory), "after" = the
working tree at 01:40 UTC (HEAD 2373e95: the on-disk cache of 0677447 and fc1a8f9, plus co-workers'
uncommitted edits). Peak RSS = the measuring process's own ru_maxrss (for
"after", the preparation runs in worker processes: see the process tree column, sampled).
  2D, 400 images -> 128x128      seconds  ratio | peak RSS MB  ratio | tree peak MB  ratio
    plain loop (before run)      11.9     1.00  |  488         1.00  |  483          1.00
    before, first run            26.8     2.26  | 1385         2.84  | 1385          2.86
    before, second run           27.6     2.32  | 1364         2.80  | 1365          2.82
    plain loop (after run)        8.3     1.00  |  489         1.00  |  477          1.00
    after, empty cache           18.3     2.22  |  396         0.81  | 1369          2.87
    after, warm cache             0.12    0.01  |  396         0.81  |  397          0.83
  3D, 40 volumes -> 128x128x64
    plain loop (before run)       3.4     1.00  |  765         1.00  |  765          1.00
    before, first run            10.7     3.15  | 1708         2.23  | 1672          2.18
    before, second run           10.5     3.09  | 1676         2.19  | 1676          2.19
    plain loop (after run)        3.2     1.00  |  777         1.00  |  778          1.00
    after, empty cache            9.0     2.85  |  396         0.51  | 1520          1.95
    after, warm cache             0.02    0.01  |  396         0.51  |  396          0.51
  Again at 01:51 (HEAD 5c8592d; the plain 2D loop now resizes before the percentiles, as fedseg
  does since 81d3861):  2D plain 7.3 s, fedseg empty cache 18.3 s (2.50x), warm 0.13 s; peak RSS
  492 / 397 / 396 MB, tree 493 / 1366 / 397 MB.  3D plain 3.2 s, fedseg empty cache 9.1 s (2.86x),
  warm 0.02 s; peak RSS 773 / 396 / 396 MB, tree 761 / 1492 / 396 MB.
So with the cache a second run is free (the cases are not touched until training reads them);
a first run is still 2.2x (2D) and 2.9x (3D) the plain loop, against the target of 1.5x, and
its preparation worker peaks at ~1.4-1.5 GB while the plain loop holding all results is ~0.5-0.8 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.childproc import peak_mb, run_child  # noqa: E402
from benchmarks.datagen import write_2d_site, write_3d_site  # noqa: E402

FEDSEG_CHILD = """
import torch, monai
from fedseg.experiment import parse_experiment
from fedseg.study import load_sites
experiment = parse_experiment(json.loads(open(sys.argv[1]).read()))
started = time.perf_counter()
sites = load_sites(experiment)
seconds = time.perf_counter() - started
report(seconds=seconds, cases=sum(len(c) for s in sites.values() for c in s.cases.values()))
"""

PLAIN_CHILD = """
import torch, monai
from pathlib import Path
from benchmarks.plain_prep import prepare_sites
job = json.loads(open(sys.argv[1]).read())
started = time.perf_counter()
cases = prepare_sites([Path(p) for p in job["roots"]], job["kind"], **job["settings"])
seconds = time.perf_counter() - started
report(seconds=seconds, cases=len(cases), held_mb=sum(c["image"].nbytes + c["label"].nbytes for c in cases) / 2**20)
"""


def experiment_2d(roots: list[Path], size: int) -> dict:
    return {"name": "prep2d", "seed": 0,
            "task": {"labels": {"background": 0, "lesion": 1}, "spatial_dims": 2, "in_channels": 1},
            "sites": [{"name": root.name, "path": str(root)} for root in roots],
            "preprocessing": {"intensity": "percentile_rescale", "percentiles": [0.5, 99.5],
                              "spatial_size": [size, size], "resize_mode": "resize"}}


def experiment_3d(roots: list[Path], spacing: list[float]) -> dict:
    return {"name": "prep3d", "seed": 0,
            "task": {"labels": {"background": 0, "organ": 1}, "spatial_dims": 3, "in_channels": 1},
            "sites": [{"name": root.name, "path": str(root)} for root in roots],
            "preprocessing": {"orientation": "RAS", "spacing": spacing, "intensity": "clip_rescale",
                              "clip": [-200, 250]}}


def measure(kind: str, roots: list[Path], experiment: dict, plain_settings: dict, work: Path, src,
            repeats: int) -> dict:
    """The three measurements of one data kind, ``repeats`` times in alternating order (a fresh
    cache folder per repeat): fedseg (empty cache), fedseg (warm cache), plain; medians."""
    (work / f"{kind}-experiment.json").write_text(json.dumps(experiment))
    (work / f"{kind}-plain.json").write_text(json.dumps(
        {"roots": [str(r) for r in roots], "kind": kind, "settings": plain_settings}))
    runs: dict[str, list] = {"plain": [], "fedseg (empty cache)": [], "fedseg (warm cache)": []}
    for repeat in range(repeats):
        env = {"FEDSEG_CACHE": str(work / f"cache-{kind}-{repeat}")}
        for which in (("plain", "fedseg") if repeat % 2 == 0 else ("fedseg", "plain")):
            if which == "plain":
                runs["plain"].append(run_child(PLAIN_CHILD, [work / f"{kind}-plain.json"], env=env))
                continue
            for name in ("fedseg (empty cache)", "fedseg (warm cache)"):
                runs[name].append(run_child(FEDSEG_CHILD, [work / f"{kind}-experiment.json"], env=env, src=src))
        print(f"  {kind} repeat {repeat + 1}: " + ", ".join(f"{name} {r[-1]['seconds']:.2f} s" for name, r in runs.items()))
    keys = ("seconds", "rss_mb", "children_rss_mb", "tree_peak_mb")
    return {name: {"cases": r[0]["cases"], "held_mb": r[0].get("held_mb", 0.0),
                   **{key: statistics.median(x[key] for x in r) for key in keys}} for name, r in runs.items()}


def print_table(title: str, results: dict) -> None:
    plain = results["plain"]
    print(f"\n{title}: {plain['cases']} cases, medians; plain loop holds {plain['held_mb']:.0f} MB of preprocessed data")
    print("| | seconds | ratio to plain | peak RSS (MB) | ratio | process tree peak (MB) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['seconds']:.2f} | {r['seconds'] / plain['seconds']:.2f}x | {peak_mb(r):.0f} | "
              f"{peak_mb(r) / peak_mb(plain):.2f}x | {r['tree_peak_mb']:.0f} | "
              f"{r['tree_peak_mb'] / plain['tree_peak_mb']:.2f}x |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds)")
    parser.add_argument("--sites", type=int, default=2, help="2D sites (default 2)")
    parser.add_argument("--cases", type=int, default=None, help="2D images per site (default 200; 4 with --quick)")
    parser.add_argument("--volumes", type=int, default=None, help="3D volumes (default 40; 5 with --quick)")
    parser.add_argument("--shape", type=int, nargs=3, default=None, help="3D volume shape (default 256 256 64)")
    parser.add_argument("--size", type=int, default=128, help="2D training size (default 128)")
    parser.add_argument("--only", choices=("2d", "3d"), help="measure one kind only")
    parser.add_argument("--uncompressed", action="store_true", help="write .nii instead of .nii.gz")
    parser.add_argument("--dir", type=Path, help="keep the generated data here (reused when present)")
    parser.add_argument("--repeats", type=int, default=1, help="measurements of each row; medians (default 1)")
    parser.add_argument("--fedseg-src", help="fedseg src folder to measure instead of the installed one")
    args = parser.parse_args(argv)
    cases = args.cases or (4 if args.quick else 200)
    volumes = args.volumes or (5 if args.quick else 40)
    shape = tuple(args.shape or ((64, 64, 16) if args.quick else (256, 256, 64)))
    sizes = ((320, 240), (200, 150)) if args.quick else None

    with tempfile.TemporaryDirectory(prefix="fedseg-data-prep-") as tmp:
        work = Path(tmp)
        data = args.dir.resolve() if args.dir else work / "data"
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; fedseg from "
              f"{args.fedseg_src or 'the installed source'}; data in {data}")
        if args.only != "3d":
            roots = [write_2d_site(data / f"site2d_{i}", cases, seed=i, **({"sizes": sizes} if sizes else {}))
                     for i in range(args.sites)]
            results = measure("2d", roots, experiment_2d(roots, args.size),
                              {"size": [args.size, args.size], "percentiles": [0.5, 99.5]}, work, args.fedseg_src,
                              args.repeats)
            print_table(f"2D: {args.sites} sites x {cases} RGB images (PNG/JPEG, up to 1920x1080) -> "
                        f"{args.size}x{args.size}", results)
        if args.only != "2d":
            root = write_3d_site(data / "site3d", volumes, shape=shape, compressed=not args.uncompressed)
            results = measure("3d", [root], experiment_3d([root], [1.6, 1.6, 2.5]),
                              {"spacing": [1.6, 1.6, 2.5], "clip": [-200.0, 250.0]}, work, args.fedseg_src,
                              args.repeats)
            print_table(f"3D: {volumes} int16 NIfTI volumes {'x'.join(map(str, shape))} at 0.8x0.8x2.5 mm -> "
                        "1.6x1.6x2.5 mm, clip_rescale", results)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
