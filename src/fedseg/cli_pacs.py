"""``fedseg pacs pull PACS_TOML --site SITE`` and ``fedseg pacs push PACS_TOML FILE...``: a site's
studies from its PACS into ``SITE/dicom/``, and DICOM files (predicted SEGs) back to the PACS.

``cli.py`` adds the commands to its parser; the handlers print through the console ``output()``
returns at call time (the one of ``cli``, which tests may replace)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedseg.errors import printable

Output = Callable[[], Console]


def add_command(commands, output: Output) -> None:
    pacs = commands.add_parser("pacs", help="pull a site's studies from its PACS; push DICOM files (SEG) to it")
    actions = pacs.add_subparsers(metavar="ACTION")
    pull = actions.add_parser("pull", help="fetch the [[cases]] of a PACS file into SITE/dicom/<case>/ (resumable)")
    pull.add_argument("config", type=Path, metavar="PACS_TOML", help="the site's PACS file: address, credential "
                                                                     "variables, [[cases]]")
    pull.add_argument("--site", type=Path, required=True, help="site folder; cases go to SITE/dicom/<case>/")
    pull.set_defaults(handler=partial(_pull, output=output))
    push = actions.add_parser("push", help="store DICOM files (e.g. fedseg predict's SEGs) on the PACS")
    push.add_argument("config", type=Path, metavar="PACS_TOML", help="the site's PACS file")
    push.add_argument("files", type=Path, nargs="+", metavar="FILE", help="DICOM files to store")
    push.set_defaults(handler=partial(_push, output=output))


def _pull(args, output: Output) -> int:
    from fedseg.data.pacs import load_config, pull

    console = output()
    config = load_config(args.config)
    console.print(escape(printable(f"pulling {len(config.cases)} case(s) from {config.address} into "
                                   f"{args.site / 'dicom'}")), highlight=False)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[case]}"), console=console)
    with progress:
        task = progress.add_task("instances", total=None, case="")

        def report(done: int, total: int, case: str) -> None:
            progress.update(task, completed=done, total=total, case=escape(case))

        summary = pull(config, args.site, report)
    for case, message in summary.failed.items():
        console.print(f"[red]error[/] {escape(printable(message))}", highlight=False, soft_wrap=True)
    console.print(f"{summary.complete} of {summary.cases} case(s) complete ({summary.skipped} already pulled): "
                  f"{summary.downloaded} instance(s) downloaded, {summary.present} already here"
                  + (f"; {len(summary.failed)} case(s) incomplete: fix and run again" if summary.failed else ""),
                  highlight=False)
    return 1 if summary.failed else 0


def _push(args, output: Output) -> int:
    from fedseg.data.pacs import load_config, push

    console = output()
    summary = push(load_config(args.config, cases=False), args.files)
    for item in summary.stored:
        console.print(escape(printable(f"stored {item.path} ({item.sop_instance_uid})")), highlight=False)
    console.print(escape(printable(f"{len(summary.stored)} file(s) stored on {summary.address}")), highlight=False)
    return 0
