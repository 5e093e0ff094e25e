"""External validation across a consortium (``fedseg evaluate MODEL.pt EXPERIMENT.toml --admin KIT``).

The job is an ordinary fedseg job (the same allow-listed coordinator and site classes) in its
scoring mode: the coordinator's job argument ``evaluate`` (the model's name and the file's
provenance) switches it, and the model travels in the job folder as ``fedseg_model.npz``: arrays
only, read with ``allow_pickle=False``, checked against the experiment's network before use. The
coordinator sends it to every site as the evaluate task's model, as it sends a global model; each
site checks it as it checks any global model and returns its pseudonymous per-case test scores.
Nothing is trained. The run directory (``<experiment>-evaluate-<model>`` on the coordinator) has
the cross_site.csv, results.json and report of a simulated evaluation.

With ``--cases all`` the job's site executor argument ``cases = "all"`` makes each site score
every case it has (training and validation cases too), under pseudonyms numbered over all of them,
as ``fedseg evaluate --cases all`` does in simulation.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedseg.errors import UserError
from fedseg.experiment import Experiment
from fedseg.external import CASES, finish, load_external_model, model_name, provenance, unbounded
from fedseg.files import safe_name
from fedseg.plans.checks import UpdateRejected, check_weights
from fedseg.runtime.run_directory import RunDirectory
from fedseg.types import Weights

MODEL_FILE = "fedseg_model.npz"
"""The model's arrays in the job's app/config folder (a fixed name: the job names no file)."""
REQUEST_KEYS = {"model", "file", "bytes", "sha256", "cases"}


def evaluate_deployed(model_path: Path, experiment: Experiment, out: Path, cases: str, name: str | None,
                      admin_kit: Path) -> dict[str, Any]:
    """Submit a scoring job for the model at ``model_path``, wait for it, download its run directory
    to ``out`` and return its results.json."""
    from fedseg.consortium import follow
    from fedseg.deployment import COMPONENTS
    from fedseg.runtime.flare import admin
    from fedseg.runtime.flare.job import write_job
    from fedseg.runtime.flare.provision import read_kit
    from fedseg.study import initial_weights

    if cases not in CASES:
        raise UserError(f"--cases must be one of {', '.join(CASES)}, got {cases!r}")
    if (Path(out) / "experiment.toml").exists():
        raise UserError(f"{out} already holds a run; an evaluation never writes into one: choose another --out")
    label = model_name(model_path, name)
    weights = load_external_model(model_path, initial_weights(experiment))  # refused here, before any site sees it
    kit = read_kit(admin_kit, "admin")
    request = provenance(model_path, cases) | {"model": label}
    session = admin.connect(kit)
    with tempfile.TemporaryDirectory() as scratch:
        job = write_job(Path(scratch) / run_name(experiment.name, label), run_name(experiment.name, label),
                        experiment.to_toml(), False, min_sites=experiment.deployment.needed(len(experiment.sites)),
                        network=kit.network, components=COMPONENTS, cases=cases)
        add_model(job, weights, request)
        job_id = admin.submit(session, job)
    ended = follow(admin_kit, session, job_id, Path(out), on_progress=lambda job: None)
    if ended.get("state") != "finished":
        raise UserError(f"evaluation job {job_id} did not finish: {ended.get('error', 'unknown reason')}")
    return json.loads((Path(out) / "results.json").read_text())


def run_name(experiment: str, label: str) -> str:
    """The run directory's and job's name: ``<experiment>-evaluate-<model>``, cut to a safe name."""
    return f"{experiment}-evaluate-{label}"[:64]


def add_model(job: Path, weights: Weights, request: dict[str, Any]) -> None:
    """The model's arrays and the coordinator's ``evaluate`` argument, into a written job folder."""
    config = job / "app" / "config"
    with (config / MODEL_FILE).open("wb") as handle:
        np.savez(handle, **weights)
    server = json.loads((config / "config_fed_server.json").read_text())
    server["workflows"][0]["args"]["evaluate"] = request
    (config / "config_fed_server.json").write_text(json.dumps(server, indent=2))


def check_request(request: Any) -> dict[str, Any]:
    """The job's ``evaluate`` argument (from the submitter) if it is one, else a UserError."""
    if not isinstance(request, dict) or set(request) != REQUEST_KEYS:
        raise UserError(f"the job's 'evaluate' argument must be a table of {sorted(REQUEST_KEYS)}")
    try:
        safe_name(request["model"], "the job's 'evaluate' model name", "FL_global")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if not isinstance(request["file"], str) or not 0 < len(request["file"]) <= 200:
        raise UserError("the job's 'evaluate' file must be a name of at most 200 characters")
    if not isinstance(request["sha256"], str) or not re.fullmatch(r"[0-9a-f]{64}", request["sha256"]):
        raise UserError("the job's 'evaluate' sha256 must be 64 hexadecimal digits")
    if isinstance(request["bytes"], bool) or not isinstance(request["bytes"], int) or request["bytes"] < 0:
        raise UserError("the job's 'evaluate' bytes must be a whole number >= 0")
    if request["cases"] not in CASES:
        raise UserError(f"the job's 'evaluate' cases must be one of {', '.join(CASES)}")
    return request


def read_model(path: Path, template: Weights) -> Weights:
    """The job's model: arrays only (no pickle), exactly the experiment network's parameters."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            for info in saved.zip.infolist():  # sizes from the archive's listing: nothing larger is unpacked
                key, size = info.filename.removesuffix(".npy"), info.file_size
                if key not in template or size > template[key].nbytes + 4096:
                    raise ValueError(f"array {key[:60]!r} ({size} bytes) is not one of the network's parameters")
            weights = {key: saved[key] for key in saved.files}
        check_weights(weights, template, "the job's model")
    except (OSError, ValueError, UpdateRejected) as exc:
        raise UserError(f"the job's model {MODEL_FILE} cannot be used: {exc}") from None
    return weights


def score_only(coordinator: Any, request: Any) -> None:
    """The coordinator's scoring mode: every site's test scores of the job's model, written up."""
    from fedseg.deployment import parse_text
    from fedseg.study import initial_weights, prepare_run_dir, round_engine

    started = time.perf_counter()
    request = check_request(request)
    experiment = parse_text(coordinator.experiment)
    if request["cases"] == "all":  # each site scores (and declares as test) every case it has
        experiment = unbounded(experiment)
    job_id = coordinator.fl_ctx.get_job_id()
    config = Path(coordinator.engine.get_workspace().get_app_config_dir(job_id))
    weights = read_model(config / MODEL_FILE, initial_weights(experiment))
    run_dir = RunDirectory(coordinator.runs_root() / run_name(experiment.name, request["model"]))
    prepare_run_dir(run_dir, experiment, coordinator.resuming(run_dir),
                    hint=f"the coordinator already holds a run named '{run_dir.root.name}'; evaluate the model "
                         "under another --name")
    coordinator.run_dir = run_dir
    coordinator.set_state("running", rounds=0)
    engine = round_engine(experiment, experiment.compute_plan(), coordinator, run_dir,
                          [spec.name for spec in experiment.sites],
                          secrets=coordinator.kit() / "fedseg-state" / run_dir.root.name)
    scores, unscored = engine.evaluate(weights)
    if unscored:
        coordinator.warning(f"no test scores from {sorted(unscored)}: {unscored}; the report leaves them out")
    source = {key: request[key] for key in ("file", "bytes", "sha256", "cases")}
    finish(run_dir, experiment, request["model"], weights, scores, unscored, started, source)
