"""``fedseg predict``: a trained model applied to new images, prepared as its run prepared its
cases, the label maps written back on each image's own grid.

The model is a run directory (its headline model as results.json names it, or ``--model NAME``:
``checkpoints/NAME.pt``, or with ``federation.folds = k`` the ensemble ``NAME_fold0..k-1.pt``,
their probabilities averaged as evaluation does) or a ``.pt`` file with the experiment it was
trained with. Models are read as ``fedseg evaluate`` reads them (``external.load_external_model``:
tensors only, checked against the experiment's network).

Each image goes through the run's deterministic preprocessing (``data.preprocessing``: orientation,
spacing, intensity, size) and the trainer's whole-image prediction (``training.inference``); MONAI
inverts the spatial steps (``Invertd``, nearest neighbour), so the label map lies on the input's
grid: a NIfTI with the input's affine and header, a PNG of the input's size; values are the task's
label values. A DICOM series (a folder; a folder of series folders gives one input each) is read as a
site reads it and its prediction written as a DICOM SEG that refers to the series' images
(``data.dicom.seg_writer``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from fedseg.data.case_files import bad_name
from fedseg.data.nnunet import group_channels
from fedseg.data.errors import Problem
from fedseg.data.readers import NIFTI_SUFFIXES, SUPPORTED_SUFFIXES, case_name, is_supported
from fedseg.errors import UserError, printable
from fedseg.experiment import Experiment, load_experiment
from fedseg.files import safe_name
from fedseg.types import Weights

FOLD = re.compile(r"^(?P<model>.+)_fold\d+$")
FIRST_CHANNEL = "_0000"
"""nnU-Net's suffix of a case's first (for one-channel tasks: only) image file; left out of output names."""


@dataclass
class TrainedModel:
    """A model to predict with: its name, its experiment, and its weights (several: an ensemble)."""

    name: str
    experiment: Experiment
    members: list[Weights]


@dataclass(frozen=True)
class Input:
    """One image to predict: its file(s) (one per channel for nnU-Net channel files) and output name."""

    name: str
    files: tuple[Path, ...]

    @property
    def dicom(self) -> bool:
        """A DICOM series (a folder): its label map is written as a DICOM SEG."""
        return self.files[0].is_dir()

    @property
    def suffix(self) -> str:
        """The output's suffix: a DICOM SEG for a series, NIfTI as the input was (``.nii.gz`` or
        ``.nii``), else PNG."""
        first = self.files[0].name.lower()
        return ".dcm" if self.dicom else next((s for s in NIFTI_SUFFIXES if first.endswith(s)), ".png")


def resolve_model(model: Path, name: str | None = None, experiment: Path | None = None) -> TrainedModel:
    """The model ``model`` (a run directory, or a ``.pt`` file with ``experiment``) names."""
    from fedseg.external import load_external_model
    from fedseg.study import initial_weights

    model = Path(model)
    if model.is_dir():
        if experiment is not None:
            raise UserError(f"{model} is a run directory: its own experiment.toml is used; leave out --experiment")
        if not (model / "experiment.toml").is_file():
            raise UserError(f"{model} has no experiment.toml: give a fedseg run directory, or a model file (.pt) "
                            "with --experiment")
        loaded = load_experiment(model / "experiment.toml")
        name = name or _headline(model)
        files = model_files(model / "checkpoints", name, loaded.federation.folds)
    elif model.is_file():
        if name is not None:
            raise UserError(f"--model picks a model of a run directory; {model} is a model file itself")
        beside = model.parent.parent / "experiment.toml"
        if experiment is None and model.parent.name == "checkpoints" and beside.is_file():
            experiment = beside  # a run's own checkpoint: the run's experiment
        if experiment is None:
            raise UserError(f"{model} is a model file: give the experiment it was trained with (its [task], [model] "
                            "and [preprocessing]) with --experiment EXPERIMENT.toml")
        loaded, files, name = load_experiment(experiment), [model], model.stem
    else:
        raise UserError(f"model {model} does not exist: give a run directory or a model file (.pt)")
    template = initial_weights(loaded)
    return TrainedModel(name, loaded, [load_external_model(path, template) for path in files])


def _headline(run: Path) -> str:
    """The model results.json names as the run's headline, else FL_global."""
    try:
        named = json.loads((run / "results.json").read_text()).get("model")
    except (OSError, ValueError, AttributeError):
        named = None
    return named if isinstance(named, str) and len(named) <= 200 else "FL_global"


def model_files(checkpoints: Path, name: str, folds: int) -> list[Path]:
    """``NAME.pt``, or the k fold models ``NAME_fold<i>.pt`` of a k-fold run; UserError naming the
    models the run has otherwise."""
    try:
        safe_name(name, "--model")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if (single := checkpoints / f"{name}.pt").is_file():
        return [single]
    members = [checkpoints / f"{name}_fold{i}.pt" for i in range(folds)] if folds > 1 else []
    missing = [path.name for path in members if not path.is_file()]
    if members and not missing:
        return members
    if members and len(missing) < len(members):
        raise UserError(f"{checkpoints}: model {name} of {folds} folds lacks {', '.join(missing)}: finish the run "
                        "with --resume")
    found = sorted({(m["model"] if (m := FOLD.match(p.stem)) else p.stem) for p in checkpoints.glob("*.pt")
                    if not p.name.startswith("global_round_")})
    raise UserError(f"{checkpoints.parent} has no model {name!r}; its models: "
                    f"{', '.join(found) if found else 'none (has the run finished?)'}: pick one with --model")


def collect_inputs(paths: list[Path], in_channels: int) -> list[Input]:
    """The images ``paths`` name: files as given, folders' supported files (not their subfolders).
    With several channels, nnU-Net channel files (``CASE_0000``, ``CASE_0001``, ...) of a folder, or
    of the files given, make one input."""
    groups: list[dict[str, Path]] = []
    given: dict[str, Path] = {}
    for path in map(Path, paths):
        if path.is_dir():
            found = {}
            for file in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
                if is_supported(file):
                    _add(found, file)
            if not found and not (found := _dicom_series(path)):
                raise UserError(f"{path} holds no image files ({', '.join(SUPPORTED_SUFFIXES)}) and no DICOM "
                                "series folders")
            groups.append(found)
        elif path.is_file():
            if not is_supported(path):
                raise UserError(f"{path}: unsupported file type; fedseg predicts {', '.join(SUPPORTED_SUFFIXES)}")
            _add(given, path)
        else:
            raise UserError(f"input {path} does not exist")
    inputs: dict[str, Input] = {}
    for group in [g for g in (given, *groups) if g]:
        for item in _inputs(group, in_channels):
            if item.name in inputs:
                raise UserError(f"{item.files[0]} and {inputs[item.name].files[0]} would both be written as "
                                f"{item.name}: predict them into different --out folders")
            inputs[item.name] = item
    return list(inputs.values())


def _add(found: dict[str, Path], path: Path) -> None:
    name = case_name(path)
    if (bad := bad_name(name)) is not None:  # the name becomes the output's and is printed
        raise UserError(f"{printable(path)}: {bad}")
    if name in found:
        raise UserError(f"{path} and {found[name]} are two images named {name}: predict them one at a time")
    found[name] = path


def _dicom_series(folder: Path) -> dict[str, Path]:
    """A folder without image files as DICOM: itself if it holds one image series (anywhere below it,
    named by the folder), else each of its sub-folders holding one (a DICOM site's ``dicom/``)."""
    from fedseg.data.dicom.scan import scan_folder
    from fedseg.data.pacs.cache import RECORDS
    from fedseg.data.site import DICOM_FOLDER

    series = scan_folder(folder, []).series  # headers only; reading the input reports each file's problems
    # a DICOM site's dicom/ (named so, or holding a pull's records): its sub-folders are the cases, even one
    cases = folder.name == DICOM_FOLDER or (folder / RECORDS).is_dir()
    if len(series) <= 1 and not (cases and series):
        found = {folder.name: folder} if series else {}
    else:
        found = {}
        for files in series.values():
            tops = {path.relative_to(folder).parts[0] for path in files}
            top = folder / tops.pop()
            if tops or not top.is_dir() or top.name in found:
                raise UserError(f"{printable(folder)} holds {len(series)} DICOM image series that are not each in a "
                                "sub-folder of their own: give each series' folder as an input")
            found[top.name] = top
    for name, path in found.items():
        if (bad := bad_name(name)) is not None:
            raise UserError(f"{printable(path)}: {bad.replace('file', 'folder')}")
    return dict(sorted(found.items()))


def _inputs(files: dict[str, Path], in_channels: int) -> list[Input]:
    if any(path.is_dir() for path in files.values()):  # DICOM series: one channel per series
        return [Input(name, (path,)) for name, path in files.items()]
    if in_channels > 1:
        problems: list[Problem] = []
        grouped, _ = group_channels(files, None, problems)
        if problems:
            raise UserError("\n".join(str(p) for p in problems))
        return [Input(name, paths) for name, paths in grouped.items()]
    strip = all(name.endswith(FIRST_CHANNEL) and len(name) > len(FIRST_CHANNEL) for name in files)
    return [Input(name[: -len(FIRST_CHANNEL)] if strip else name, (path,)) for name, path in files.items()]


def output_paths(inputs: list[Input], out: Path, overwrite: bool = False) -> list[Path]:
    """Where each input's label map goes; UserError before anything is written if ``out`` is a
    file or (without ``overwrite``) an output exists."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder for the label maps")
    targets = [out / f"{item.name}{item.suffix}" for item in inputs]
    sources = {file.resolve() for item in inputs for file in item.files}
    for target in targets:
        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise UserError(f"{target} exists and is not a plain file (a link or a folder): remove it, or choose "
                            "another --out")
        if target.resolve() in sources:
            raise UserError(f"{target} is the input image itself: choose another --out for the label maps")
    existing = [path.name for path in targets if path.exists()]
    if existing and not overwrite:
        more = f" and {len(existing) - 5} more" if len(existing) > 5 else ""
        raise UserError(f"{out} already holds {', '.join(existing[:5])}{more}: pass --overwrite to replace them, "
                        "or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return targets
