"""``fedseg`` command line: demo, simulate, data check, compare, report; and for real runs across
institutions: provision, server, site, submit, status."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

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
    check.add_argument("site", type=Path, help="site folder (images/ + labels/) or CSV manifest")
    check.add_argument("--labels", help="declared label values, e.g. background=0,liver=1")
    check.add_argument("--dims", type=int, choices=(2, 3), help="spatial dimensions (default: from the files)")
    check.set_defaults(handler=_data_check)

    compare = commands.add_parser("compare", help="paired comparison of the models of several runs")
    compare.add_argument("run_dirs", type=Path, nargs="+", help="finished run directories (same data and seed)")
    compare.add_argument("--reference", help="model to compare the others against, as RUN/MODEL "
                                             "(default: the first run's first model)")
    compare.add_argument("--out", type=Path, help="also write the comparison to this Markdown file")
    compare.set_defaults(handler=_compare)

    report = commands.add_parser("report", help="(re)write report.md and report.html of a run directory")
    report.add_argument("run_dir", type=Path)
    report.set_defaults(handler=_report)
    _deployment_commands(commands)
    return parser


def _deployment_commands(commands) -> None:
    provision = commands.add_parser("provision", help="startup kits with certificates for a consortium")
    provision.add_argument("project", type=Path, help="PROJECT.toml: coordinator host, sites, admins")
    provision.add_argument("--out", type=Path, required=True, help="new folder for the kits")
    provision.set_defaults(handler=_provision)

    server = commands.add_parser("server", help="run the coordinator from its kit (foreground)")
    server.add_argument("kit", type=Path, help="the coordinator's kit (KITS_DIR/coordinator)")
    server.add_argument("--runs", type=Path, help="where run directories are written (default: KIT/runs)")
    server.set_defaults(handler=_server)

    site = commands.add_parser("site", help="run a site from its kit (foreground)")
    site.add_argument("kit", type=Path, help="the site's kit (KITS_DIR/<site>)")
    site.add_argument("--data", type=Path, required=True, help="this site's data folder or CSV manifest; "
                                                               "it never leaves the site")
    site.add_argument("--share-logs", action="store_true",
                      help="let the coordinator receive this site's job error logs and its admins read the "
                           "site's logs (off by default: log lines may name patients' files)")
    site.add_argument("--fault", metavar="KIND", help="robustness testing only: this site misbehaves on purpose "
                      "(nan, random, scale:K, drop) so the coordinator's guards can be seen at work")
    site.add_argument("--max-epsilon", type=float, metavar="E", help="train only under sample-level DP, with "
                      "epsilon <= E for all runs together (this site's own privacy budget)")
    site.set_defaults(handler=_site)

    submit = commands.add_parser("submit", help="run an experiment file on the consortium")
    submit.add_argument("experiment", type=Path, help="experiment TOML file (the one 'simulate' takes)")
    submit.add_argument("--admin", type=Path, required=True, help="your admin kit (KITS_DIR/admin)")
    submit.add_argument("--out", type=Path, help="where to copy the run directory when the run ends")
    submit.add_argument("--resume", action="store_true", help="continue the coordinator's run after its last round")
    submit.add_argument("--no-wait", action="store_true", help="return once the job is accepted")
    submit.set_defaults(handler=_submit)

    status = commands.add_parser("status", help="sites online, jobs, rounds and last metrics")
    status.add_argument("--admin", type=Path, required=True, help="your admin kit (KITS_DIR/admin)")
    status.set_defaults(handler=_status)


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


def _parse_labels(text: str) -> dict[str, int]:
    from fedseg.data.task import Task

    try:
        pairs = [item.split("=") for item in text.split(",")]
        labels = {name.strip(): int(value) for name, value in pairs}
    except ValueError:
        raise UserError(f"--labels must look like background=0,liver=1, got '{text}'") from None
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


def _report(args) -> int:
    from fedseg.report.markdown import write_report

    if not (args.run_dir / "results.json").exists():
        raise UserError(f"{args.run_dir} has no results.json: is it a finished fedseg run directory?")
    console.print(f"report: {write_report(args.run_dir)}")
    return 0


def _provision(args) -> int:
    from fedseg.consortium import provision_kits

    kits = provision_kits(args.project, args.out)
    for name, kit in kits.items():
        console.print(f"{name:>14}: {kit}")
    console.print("Hand each kit to its owner over a trusted channel (it holds a private key); keep "
                  "'coordinator' on the coordinator's host. See README, 'Running across institutions'.")
    return 0


def _server(args) -> int:
    from fedseg.consortium import run_server

    run_server(args.kit, args.runs, announce=console.print)
    return 0


def _site(args) -> int:
    from fedseg.consortium import run_site

    return run_site(args.kit, args.data, args.share_logs, args.fault, args.max_epsilon) or 0  # it execs: no return


def _submit(args) -> int:
    from fedseg.console import results_table, round_line
    from fedseg.consortium import follow, submit
    from fedseg.experiment import load_experiment

    experiment = load_experiment(args.experiment)
    session, job_id = submit(experiment, args.admin, args.resume, lambda line: console.print(escape(line)))
    console.print(f"submitted [bold]{escape(experiment.name)}[/] as job {job_id}")
    if args.no_wait:
        session.close()
        return 0
    out = args.out or Path("runs") / f"{experiment.name}-{job_id[:8]}"

    ended = follow(args.admin, session, job_id, out,
                   lambda job: console.print(round_line(job.progress), highlight=False) if "round" in job.progress
                   else None)
    if ended.get("state") != "finished":
        raise UserError(f"job {job_id} did not finish: {ended.get('error', 'unknown reason')}")
    console.print(results_table(json.loads((out / "results.json").read_text())))
    console.print(f"run directory: {out}\nreport: {out / 'report.md'}")
    return 0


def _status(args) -> int:
    from fedseg.consortium import status

    info = status(args.admin)
    console.print(f"coordinator: {info['server']}; sites online: {', '.join(info['sites']) or 'none'}")
    for job in info["jobs"]:
        progress = job["progress"]
        where = f", round {progress['round'] + 1}/{progress['rounds']}" if "round" in progress else ""
        console.print(f"{job['job_id']}  {escape(str(job['name']))}  {job['status']}{where}")
        for record in progress.get("last", []):
            console.print(f"    {escape(json.dumps(record, default=str))}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
