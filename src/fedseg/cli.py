"""``fedseg`` command line: demo, simulate, data check, compare, sweep, report, predict; and for real runs
across institutions (``cli_deployment``): provision, server, site, submit, status."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from fedseg.cli_deployment import add_commands as add_deployment_commands
from fedseg.cli_predict import add_command as add_predict_command
from fedseg.cli_pacs import add_command as add_pacs_command
from fedseg.errors import UserError

console = Console()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except UserError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        console.print("interrupted; rerun with --resume to continue from the last completed round")
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedseg", description=__doc__)
    commands = parser.add_subparsers(metavar="COMMAND")

    demo = commands.add_parser("demo", help="federated training on built-in synthetic 3-site data")
    demo.add_argument("--out", type=Path, help="run directory (default: runs/demo-<time>)")
    demo.add_argument("--rounds", type=int, default=None, help="federated rounds (default 20)")
    demo.add_argument("--cases", type=int, default=None, help="cases per site (default 60)")
    demo.set_defaults(handler=_demo)

    simulate = commands.add_parser("simulate", help="run an experiment file in the in-process simulation")
    simulate.add_argument("experiment", type=Path, help="experiment TOML file")
    simulate.add_argument("--out", type=Path, required=True, help="run directory to write")
    simulate.add_argument("--resume", action="store_true", help="continue after the last completed round")
    simulate.set_defaults(handler=_simulate)

    data = commands.add_parser("data", help="data utilities").add_subparsers(metavar="ACTION")
    check = data.add_parser("check", help="read a site and report cases, shapes, intensities, labels, errors")
    check.add_argument("site", type=Path, help="site folder (images/ + labels/ or masks/, nnU-Net's imagesTr/ + "
                                               "labelsTr/, or dicom/ with a folder per case) or CSV manifest")
    check.add_argument("--labels", help="declared label values, e.g. background=0,liver=1; DICOM segment or ROI "
                                        "names: background=0,liver=Liver")
    check.add_argument("--dims", type=int, choices=(2, 3), help="spatial dimensions (default: from the files)")
    check.set_defaults(handler=_data_check)
    cache = data.add_parser("cache", help="where this machine keeps preprocessed cases (FEDSEG_CACHE), how much")
    cache.add_argument("--clear", action="store_true", help="delete every cached case (made again when needed)")
    cache.set_defaults(handler=_data_cache)

    compare = commands.add_parser("compare", help="paired comparison of the models of several runs")
    compare.add_argument("run_dirs", type=Path, nargs="+", help="finished run directories (same data and seed)")
    compare.add_argument("--reference", help="model to compare the others against, as RUN/MODEL "
                                             "(default: the first run's first model)")
    compare.add_argument("--out", type=Path, help="also write the comparison to this Markdown file")
    compare.set_defaults(handler=_compare)

    sweep = commands.add_parser("sweep", help="a grid of plans and options against one baseline, ranked")
    sweep.add_argument("experiment", type=Path, help="base experiment TOML file")
    sweep.add_argument("--grid", type=Path, required=True, help="SWEEP.toml: [[grid]] tables mapping dotted keys "
                                                                "(\"plan.name\", \"training.lr\") to lists of values")
    sweep.add_argument("--out", type=Path, required=True, help="folder for the cells' run directories and "
                                                               "sweep.md/.json/.png")
    sweep.add_argument("--resume", action="store_true", help="keep finished cells, continue an interrupted one")
    sweep.set_defaults(handler=_sweep)

    evaluate = commands.add_parser("evaluate", help="score a model trained anywhere on every site's test cases")
    evaluate.add_argument("model", type=Path, help="state dict (.pt): a run's FL_global.pt, a MONAI bundle's model.pt")
    evaluate.add_argument("experiment", type=Path, help="experiment TOML file: the sites and the model's network")
    evaluate.add_argument("--out", type=Path, required=True, help="run directory to write")
    evaluate.add_argument("--cases", choices=("test", "all"), default="test", help="which cases each site scores")
    evaluate.add_argument("--name", help="the model's name in the results (default: the file's name)")
    evaluate.add_argument("--admin", type=Path, help="admin kit: score at a consortium's sites (else simulation)")
    evaluate.set_defaults(handler=_evaluate)

    report = commands.add_parser("report", help="(re)write report.md and report.html of a run directory")
    report.add_argument("run_dir", type=Path)
    report.set_defaults(handler=_report)
    add_deployment_commands(commands, lambda: console)  # read at call time: tests may replace the console
    add_predict_command(commands, lambda: console)
    add_pacs_command(commands, lambda: console)
    return parser


def _simulate(args) -> int:
    from fedseg.experiment import load_experiment

    experiment = load_experiment(args.experiment)
    _run(experiment, args.out, args.resume)
    return 0


def _run(experiment, out: Path, resume: bool) -> dict:
    from fedseg.console import ProgressObserver, headline, matrix_table, results_table
    from fedseg.simulate import run_simulation

    console.print(f"[bold]{escape(experiment.name)}[/]: {len(experiment.sites)} sites, "
                  f"{experiment.federation.rounds} rounds of {experiment.plan['name']}, "
                  f"arms: {', '.join(experiment.arms)}; reading and checking the data ...")
    results = run_simulation(experiment, out, resume=resume,
                             progress=lambda arm: ProgressObserver(console, label=arm))
    console.print(results_table(results))
    if len(results["models"]) > 1:
        console.print(matrix_table(results["matrix"]))
        for line in headline(results["comparisons"]):
            console.print(line, highlight=False)
    console.print(f"run directory: {out}\nreport: {out / 'report.md'}  (wall time {results['wall_time_s']:.0f} s)")
    return results


def _demo(args) -> int:
    from fedseg.demo import demo_experiment

    out = args.out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    experiment = demo_experiment(out / "data", rounds=args.rounds, n_cases=args.cases)
    _run(experiment, out, resume=False)
    return 0


def _data_cache(args) -> int:
    from fedseg.data.cache import cache_root, cache_size, clear_cache

    root = cache_root()
    if args.clear:
        console.print(escape(f"deleted {clear_cache(root)} cached case(s) from {root}"), highlight=False)
    else:
        cases, size = cache_size(root)
        console.print(escape(f"{root}: {cases} preprocessed case(s), {size / 2**20:.1f} MB; it stays on this "
                             "machine (set FEDSEG_CACHE to move it, `fedseg data cache --clear` to empty it)"),
                      highlight=False)
    return 0


def _data_check(args) -> int:
    from fedseg.console import inspection_table
    from fedseg.data.inspect import inspect_site

    labels = _parse_labels(args.labels) if args.labels else None
    inspection = inspect_site(args.site, labels=labels, spatial_dims=args.dims)
    if inspection.cases:
        console.print(inspection_table(inspection))
        totals = ", ".join(f"{v}: {c}" for v, c in inspection.label_totals.items())
        console.print(f"label values over all readable cases (value: voxels): {totals}")
    for problem in inspection.problems:  # escaped: paths and messages may hold "[...]"
        console.print(f"[red]error[/] {escape(str(problem))}", highlight=False, soft_wrap=True)
    bad = len(inspection.problems)
    console.print(f"{len(inspection.cases)} case(s) ok, {bad} problem(s)")
    return 1 if bad else 0


def _parse_labels(text: str) -> dict[str, int | str]:
    """``background=0,liver=1``; a DICOM site's class may be given by its segment name: ``liver=Liver``."""
    from fedseg.data.task import Task

    try:
        pairs = [item.split("=") for item in text.split(",")]
        labels = {name.strip(): int(value) if value.strip().lstrip("+-").isdigit() else value.strip() for name, value in pairs}
    except ValueError:
        raise UserError(f"--labels must look like background=0,liver=1 (or liver=Liver: a DICOM segment name), "
                        f"got '{text}'") from None
    if len(labels) != len(pairs):
        raise UserError(f"--labels names a class twice: '{text}'")
    try:
        Task(labels)  # background 0, distinct values: the checks every task gets
    except ValueError as exc:
        raise UserError(f"--labels: {exc}") from None
    return labels


def _compare(args) -> int:
    from fedseg.compare import comparison_report

    text = comparison_report(args.run_dirs, args.reference)
    console.print(text, highlight=False, markup=False)
    if args.out:
        args.out.write_text(text)
    return 0


def _sweep(args) -> int:
    from fedseg.sweep import run_sweep
    from fedseg.sweep_report import SweepProgress, ranking_lines

    summary = run_sweep(args.experiment, args.grid, args.out, args.resume, progress=SweepProgress(console))
    for line in ranking_lines(summary):
        console.print(line, highlight=False, markup=False)
    console.print(f"sweep: {args.out / 'sweep.md'}", highlight=False, markup=False)
    return 0


def _evaluate(args) -> int:
    from fedseg.console import results_table
    from fedseg.experiment import load_experiment
    from fedseg.external import evaluate_simulated

    experiment = load_experiment(args.experiment)
    if args.admin:
        from fedseg.external_deployment import evaluate_deployed

        results = evaluate_deployed(args.model, experiment, args.out, args.cases, args.name, args.admin)
    else:
        results = evaluate_simulated(args.model, experiment, args.out, args.cases, args.name)
    console.print(results_table(results))
    console.print(f"run directory: {args.out}\nreport: {args.out / 'report.md'}", highlight=False, markup=False)
    return 0


def _report(args) -> int:
    from fedseg.report.markdown import write_report

    if not (args.run_dir / "results.json").exists():
        raise UserError(f"{args.run_dir} has no results.json: is it a finished fedseg run directory?")
    console.print(f"report: {write_report(args.run_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
