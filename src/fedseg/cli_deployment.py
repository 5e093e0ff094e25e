"""``fedseg`` commands for real runs across institutions: provision, server, site, submit, status.

``cli.py`` adds them to its parser; each handler prints through the console ``output()`` returns
at call time (the one of ``cli``, which tests may replace)."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from fedseg.errors import UserError

Output = Callable[[], Console]


def add_commands(commands, output: Output) -> None:
    """The deployment commands as sub-parsers of ``commands``, printing to ``output()``."""
    provision = commands.add_parser("provision", help="startup kits with certificates for a consortium")
    provision.add_argument("project", type=Path, help="PROJECT.toml: coordinator host, sites, admins")
    provision.add_argument("--out", type=Path, required=True, help="new folder for the kits")
    provision.set_defaults(handler=partial(_provision, output=output))

    server = commands.add_parser("server", help="run the coordinator from its kit (foreground)")
    server.add_argument("kit", type=Path, help="the coordinator's kit (KITS_DIR/coordinator)")
    server.add_argument("--runs", type=Path, help="where run directories are written (default: KIT/runs)")
    server.set_defaults(handler=partial(_server, output=output))

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
    site.add_argument("--share-models", choices=("score", "none"), default="score",
                      help="score: this site's standalone and FL_local models may be sent, via the coordinator "
                           "(in memory only), to the other sites to be scored on their test cases; none: they "
                           "stay here and are scored on this site's test cases only")
    site.add_argument("--device", metavar="DEVICE", help="train on this device (cpu, cuda, cuda:N) whatever the "
                      "experiment says; default: its [training] device (auto: a GPU when there is one)")
    site.add_argument("--threads", type=int, metavar="N", help="torch threads of this site's processes (sites "
                      "sharing one machine: split its cores); default: torch's (all cores)")
    site.set_defaults(handler=_site)

    submit = commands.add_parser("submit", help="run an experiment file on the consortium")
    submit.add_argument("experiment", type=Path, help="experiment TOML file (the one 'simulate' takes)")
    submit.add_argument("--admin", type=Path, required=True, help="your admin kit (KITS_DIR/admin)")
    submit.add_argument("--out", type=Path, help="where to copy the run directory when the run ends")
    submit.add_argument("--resume", action="store_true", help="continue the coordinator's run after its last round")
    submit.add_argument("--no-wait", action="store_true", help="return once the job is accepted")
    submit.set_defaults(handler=partial(_submit, output=output))

    status = commands.add_parser("status", help="sites online, jobs, rounds and last metrics")
    status.add_argument("--admin", type=Path, required=True, help="your admin kit (KITS_DIR/admin)")
    status.set_defaults(handler=partial(_status, output=output))


def _provision(args, output: Output) -> int:
    from fedseg.consortium import provision_kits

    console = output()
    kits = provision_kits(args.project, args.out)
    for name, kit in kits.items():
        console.print(f"{name:>14}: {kit}")
    console.print("Hand each kit to its owner over a trusted channel (it holds a private key); keep "
                  "'coordinator' on the coordinator's host. See README, 'Running across institutions'.")
    return 0


def _server(args, output: Output) -> int:
    from fedseg.consortium import run_server

    run_server(args.kit, args.runs, announce=output().print)
    return 0


def _site(args) -> int:
    from fedseg.consortium import run_site

    return run_site(args.kit, args.data, args.share_logs, args.fault, args.max_epsilon, args.share_models,
                    device=args.device, threads=args.threads) or 0  # it execs: no return


def _submit(args, output: Output) -> int:
    from fedseg.console import results_table, round_line
    from fedseg.consortium import follow, submit
    from fedseg.experiment import load_experiment

    console = output()
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


def _status(args, output: Output) -> int:
    import time

    from fedseg.console import running_line
    from fedseg.consortium import status

    console = output()
    info = status(args.admin)
    console.print(f"coordinator: {info['server']}; sites online: {', '.join(info['sites']) or 'none'}")
    for job in info["jobs"]:
        progress = job["progress"]
        where = f", round {progress['round'] + 1}/{progress['rounds']}" if "round" in progress else ""
        console.print(f"{job['job_id']}  {escape(str(job['name']))}  {job['status']}{where}")
        if running := running_line(progress, time.time()):  # the round under way: which sites answered
            console.print(f"    {running}", highlight=False)
        for record in progress.get("last", []):
            console.print(f"    {escape(json.dumps(record, default=str))}", highlight=False)
    return 0
