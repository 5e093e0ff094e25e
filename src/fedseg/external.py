"""External validation: a model trained anywhere, scored on every site's test cases (or all its
cases) and written up as a run is: cross_site.csv, results.json and the report.

The model is read with ``torch.load(weights_only=True)`` only (no code is ever unpickled) and
accepted in these forms, nothing else:

- a plain state dict of tensors (fedseg's ``FL_global.pt``, ``standalone_<site>.pt``; a MONAI
  bundle's ``models/model.pt``; ``torch.save(network.state_dict(), path)``);
- such a state dict under the key ``state_dict`` or ``model`` of a table (PyTorch Lightning,
  ignite/MONAI ``CheckpointSaver`` with several objects, fedseg's ``global_round_NNN.pt``), the
  other entries ignored;
- with its keys prefixed by ``module.`` (DataParallel/DistributedDataParallel) and/or ``model.``
  (a Lightning module holding the network as ``self.model``): a prefix is taken off only when the
  names then equal the experiment network's (MONAI's UNet names its own layers ``model.…``).

The parameters must then be exactly the experiment network's: the same names and shapes
(floating values are cast to the network's dtype), finite, as the site checks any global model.
Where the model goes to sites it travels as arrays, like a global model of a run.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedseg.errors import UserError
from fedseg.experiment import Experiment
from fedseg.files import safe_name
from fedseg.plans.checks import UpdateRejected, check_weights
from fedseg.runtime.run_directory import RunDirectory
from fedseg.types import Weights

WRAPPERS = ("state_dict", "model")
"""Keys of a checkpoint table under which a state dict is looked for (in this order)."""
PREFIXES = ("module.", "model.")
"""Key prefixes a saved state dict may carry that the bare network's names lack."""
CASES = ("test", "all")
LISTED = 5
FIX = ("the experiment's [model] (name, channels, strides, num_res_units, ...) and [task] (labels and "
       "spatial_dims set the network's output and input) must describe the network the weights were trained "
       "with; for a MONAI bundle copy the arguments of its network_def into [model]")


def load_external_model(path: Path, template: Weights) -> Weights:
    """The model at ``path`` as weights of the network ``template`` describes; UserError naming
    the file and what to fix when it is not a tensor-only file or does not fit."""
    state = _state_dict(_load(Path(path)), Path(path))
    fitted = _fit_names(state, template, Path(path))
    weights: Weights = {}
    for key, expected in template.items():
        value = fitted[key].detach().cpu().numpy()
        if value.shape != expected.shape:
            wrong = [f"{k!r}: {tuple(fitted[k].shape)} in the file, {expected_.shape} in the network"
                     for k, expected_ in template.items() if tuple(fitted[k].shape) != expected_.shape]
            raise UserError(f"{path}: {len(wrong)} parameter(s) have other shapes than the experiment's network: "
                            f"{'; '.join(wrong[:LISTED])}; {FIX}")
        if value.dtype != expected.dtype and value.dtype.kind == expected.dtype.kind == "f":
            value = value.astype(expected.dtype)
        elif value.dtype != expected.dtype and value.dtype.kind in "iu" and expected.dtype.kind in "iu":
            value = value.astype(expected.dtype)
        weights[key] = np.array(value, order="C")
    try:
        check_weights(weights, template, "model")
    except UpdateRejected as exc:
        raise UserError(f"{path}: {exc}") from None
    return weights


def _load(path: Path) -> Any:
    import torch

    if not path.is_file():
        raise UserError(f"model file {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip, torch: a file fedseg will not read
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a file of tensors fedseg can read (torch.load with weights_only=True: "
                        f"{first}); fedseg never unpickles objects: save the weights with "
                        "torch.save(network.state_dict(), path)") from None


def _is_state_dict(value: Any) -> bool:
    import torch

    return (isinstance(value, dict) and len(value) > 0 and all(isinstance(k, str) for k in value)
            and all(isinstance(v, torch.Tensor) for v in value.values()))


def _state_dict(loaded: Any, path: Path) -> dict:
    if _is_state_dict(loaded):
        return loaded
    if isinstance(loaded, dict):
        for key in WRAPPERS:
            if _is_state_dict(loaded.get(key)):
                return loaded[key]
        keys = ", ".join(repr(k)[:40] for k in list(loaded)[:LISTED])
        raise UserError(f"{path} holds a table ({keys}) that is neither a state dict of tensors nor one under "
                        f"{' or '.join(map(repr, WRAPPERS))}: save the weights with "
                        "torch.save(network.state_dict(), path)")
    raise UserError(f"{path} holds a {type(loaded).__name__}, not a state dict: save the weights with "
                    "torch.save(network.state_dict(), path)")


def _fit_names(state: dict, template: Weights, path: Path) -> dict:
    """``state`` with the one prefix taken off (if any) that makes its names the network's."""
    candidates = [state]
    while (current := candidates[-1]) and len(candidates) <= 3:
        prefix = next((p for p in PREFIXES if all(k.startswith(p) for k in current)), None)
        if prefix is None:
            break
        candidates.append({k[len(prefix):]: v for k, v in current.items()})
    for candidate in candidates:
        if candidate.keys() == template.keys():
            return candidate
    closest = max(candidates, key=lambda c: len(c.keys() & template.keys()))
    missing = [k for k in template if k not in closest]
    extra = [k for k in closest if k not in template]
    parts = ([f"the network's {_names(missing)} not in the file"] if missing else []) + (
        [f"the file's {_names(extra)} not in the network"] if extra else [])
    raise UserError(f"{path}: its parameter names do not fit the experiment's network ({'; '.join(parts)}); {FIX}")


def _names(keys: list[str]) -> str:
    more = len(keys) - LISTED
    return ", ".join(repr(k)[:80] for k in keys[:LISTED]) + (f" and {more} more" if more > 0 else "")


def model_name(path: Path, name: str | None = None) -> str:
    """The model's name in the results: ``name``, else the file's stem (``FL_global`` for a run's)."""
    try:
        return safe_name(name if name is not None else Path(path).stem, "model name", "FL_global")
    except ValueError as exc:
        raise UserError(f"{exc}; give one with --name") from None


def provenance(path: Path, cases: str) -> dict[str, Any]:
    """What results.json records of the evaluated file: its name, size and SHA-256."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return {"file": Path(path).name, "bytes": Path(path).stat().st_size, "sha256": digest, "cases": cases}


def evaluate_simulated(model_path: Path, experiment: Experiment, out: Path, cases: str = "test",
                       name: str | None = None) -> dict[str, Any]:
    """Score the model at ``model_path`` on every site of ``experiment`` (its ``cases``: "test"
    or "all") in this process; writes the run directory ``out`` and returns results.json."""
    from fedseg.runtime.simulation import InProcessDispatcher
    from fedseg.study import initial_weights, load_sites, round_engine, site_app

    started = time.perf_counter()
    if cases not in CASES:
        raise UserError(f"--cases must be one of {', '.join(CASES)}, got {cases!r}")
    label = model_name(model_path, name)
    weights = load_external_model(model_path, initial_weights(experiment))
    run_dir = start_run_dir(out, experiment)
    datasets = load_sites(experiment)
    if cases == "all":
        datasets = {site: every_case_tested(data) for site, data in datasets.items()}
        experiment = unbounded(experiment)
    apps = {site: site_app(experiment, data) for site, data in datasets.items()}
    engine = round_engine(experiment, experiment.compute_plan(), InProcessDispatcher(apps), run_dir, list(apps))
    scores, unscored = engine.evaluate(weights)
    return finish(run_dir, experiment, label, weights, scores, unscored, started, provenance(model_path, cases))


def start_run_dir(out: Path, experiment: Experiment) -> RunDirectory:
    from fedseg.study import prepare_run_dir

    run_dir = RunDirectory(out)
    prepare_run_dir(run_dir, experiment, resume=False,
                    hint=f"{out} already holds a run; an evaluation never writes into one: choose another --out")
    return run_dir


def every_case_tested(data: Any) -> Any:
    """A copy of a site's dataset whose test split holds all its cases (train and val kept, so the
    site still declares them)."""
    import copy

    every = sorted((c for cases in data.cases.values() for c in cases), key=lambda c: c["case"])
    tested = copy.copy(data)
    tested.cases = {**data.cases, "test": every}
    return tested


def unbounded(experiment: Experiment) -> Experiment:
    """``experiment`` without agreed ``[[sites]] cases``: they bound a site's weight in an average,
    and a site that scores all its cases declares its train and val cases twice."""
    from dataclasses import replace

    return replace(experiment, sites=[replace(spec, cases=None) for spec in experiment.sites])


def finish(run_dir: RunDirectory, experiment: Experiment, label: str, weights: Weights, scores: dict,
           unscored: dict[str, str], started: float, source: dict[str, Any]) -> dict[str, Any]:
    """The evaluated model kept in checkpoints/, cross_site.csv, results.json (with ``external``:
    the file's provenance) and the report."""
    from fedseg.report.markdown import write_report
    from fedseg.study import write_results

    if not scores:
        raise UserError(f"no site returned usable test scores: {unscored}")
    run_dir.save_model(label, weights)
    results = write_results(run_dir, experiment, {label: scores}, started, False,
                            {f"{site} ({label})": reason for site, reason in unscored.items()})
    results.update(external=source, arms=[], rounds=0)
    run_dir.write_json("results.json", results)
    write_report(run_dir.root)
    return results
