"""``fedseg predict MODEL INPUT... --out DIR``: label maps of new images from a trained model.

``cli.py`` adds the command to its parser; the handler prints through the console ``output()``
returns at call time (the one of ``cli``, which tests may replace)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedseg.errors import UserError

Output = Callable[[], Console]


def add_command(commands, output: Output) -> None:
    predict = commands.add_parser("predict", help="label maps of new images (NIfTI, PNG, DICOM series -> DICOM SEG) "
                                                  "from a trained model")
    predict.add_argument("model", type=Path, help="a run directory (its headline model, or --model NAME), or a "
                                                  "model file (.pt) with --experiment")
    predict.add_argument("inputs", type=Path, nargs="+", metavar="INPUT", help="image files or folders of them")
    predict.add_argument("--out", type=Path, required=True, help="folder for the label maps (same names)")
    predict.add_argument("--model", dest="model_name", metavar="NAME",
                         help="which model of the run directory, e.g. FL_local_site_a (default: its headline model)")
    predict.add_argument("--experiment", type=Path, help="the experiment a model file was trained with")
    predict.add_argument("--overwrite", action="store_true", help="replace label maps already in --out")
    predict.add_argument("--device", help="cpu, cuda or cuda:N (default: the experiment's [training] device)")
    predict.add_argument("--push", type=Path, metavar="PACS_TOML", help="store the DICOM SEGs written on the site's "
                                                                        "PACS (fedseg pacs push)")
    predict.set_defaults(handler=partial(_predict, output=output))


def _predict(args, output: Output) -> int:
    from fedseg.predict import collect_inputs, output_paths, resolve_model
    from fedseg.predictor import Predictor

    console = output()
    pacs = None
    if args.push is not None:  # its problems before any prediction
        from fedseg.data.pacs import load_config

        pacs = load_config(args.push, cases=False)
    model = resolve_model(args.model, args.model_name, args.experiment)
    inputs = collect_inputs(args.inputs, model.experiment.task.in_channels)
    targets = output_paths(inputs, args.out, args.overwrite)
    predictor = Predictor(model, args.device)
    members = f" (ensemble of {len(model.members)})" if len(model.members) > 1 else ""
    console.print(escape(f"{model.name}{members}: {len(inputs)} image(s) -> {args.out}"), highlight=False)
    failed, segs = [], []
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[status]}"), console=console)
    with progress:
        task = progress.add_task("predict", total=len(inputs), status="")
        for item, target in zip(inputs, targets):
            progress.update(task, status=escape(item.name))
            try:
                predictor.write(item, target)
                segs += [target] if item.dicom else []
            except UserError as exc:  # one bad image does not stop the others
                failed.append(str(exc))
            progress.advance(task)
    for message in failed:
        console.print(f"[red]error[/] {escape(message)}", highlight=False, soft_wrap=True)
    console.print(f"{len(inputs) - len(failed)} label map(s) written to {escape(str(args.out))}"
                  + (f", {len(failed)} image(s) failed" if failed else ""), highlight=False)
    if pacs is not None and segs:
        from fedseg.data.pacs import push

        summary = push(pacs, segs)
        console.print(escape(f"{len(summary.stored)} DICOM SEG(s) stored on {summary.address}"), highlight=False)
    elif pacs is not None:
        console.print("nothing to push: no DICOM series among the inputs", highlight=False)
    return 1 if failed else 0
