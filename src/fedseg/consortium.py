"""The deployment commands: provision kits, run the coordinator and the sites, submit and follow
experiments. Each is a thin layer over the FLARE adapter in ``runtime/flare``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedseg.deployed_arms import SHARE_CHOICES
from fedseg.deployment import COMPONENTS, deployable, unbounded_sites
from fedseg.errors import UserError
from fedseg.experiment import Experiment
from fedseg.runtime.flare import admin, processes
from fedseg.runtime.flare.job import DEPLOYMENT_FILE, write_job
from fedseg.runtime.flare.provision import Kit, load_project, provision, read_kit
from fedseg.runtime.site_app import check_fault


def provision_kits(project_file: Path, out: Path) -> dict[str, Path]:
    return provision(load_project(project_file), out)


def run_server(kit_dir: Path, runs: Path | None = None, announce: Callable[[str], None] = print) -> None:
    """Replace this process with the coordinator (so a supervisor's kill reaches FLARE itself)."""
    kit = read_kit(kit_dir, "server")
    processes.configure_server(kit, COMPONENTS.controller)
    for job in processes.requeue_interrupted_jobs(kit):
        announce(f"job {job} was interrupted by the last shutdown; it will resume from its last round")
    command = processes.server_command(kit)
    os.execve(command[0], command, processes.server_environment(kit, runs))


def run_site(kit_dir: Path, data: Path, share_logs: bool = False, fault: str | None = None,
             max_epsilon: float | None = None, share_models: str = "score", device: str | None = None,
             threads: int | None = None) -> None:
    """Replace this process with the site. Its logs stay here unless ``share_logs``, and it trains
    only under sample-level DP within ``max_epsilon`` if given: both choices are the site
    operator's alone (nothing in a job or in the coordinator's kits can make them), as are its
    ``device`` and torch ``threads``."""
    kit = read_kit(kit_dir, "site")
    if not Path(data).is_dir() and not Path(data).is_file():
        raise UserError(f"--data {data} does not exist; give the folder (images/ + labels/) or CSV manifest "
                        f"of site '{kit.name}'")
    try:
        check_fault(fault)
    except ValueError as exc:
        raise UserError(f"--fault: {exc}") from None
    if max_epsilon is not None and not (math.isfinite(max_epsilon) and max_epsilon > 0):
        raise UserError(f"--max-epsilon must be a finite number > 0, got {max_epsilon}")
    if share_models not in SHARE_CHOICES:
        raise UserError(f"--share-models must be one of {', '.join(SHARE_CHOICES)}, got {share_models!r}")
    try:
        environment = processes.site_resources(processes.site_environment(data, fault, max_epsilon, share_models),
                                               kit.name, device, threads)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    processes.configure_site(kit, COMPONENTS.executor, share_logs)
    command = processes.site_command(kit)
    os.execve(command[0], command, environment)


def submit(experiment: Experiment, admin_kit: Path, resume: bool = False,
           announce: Callable[[str], None] = print) -> tuple[Any, str]:
    """Send the experiment to the coordinator; returns the admin session and the job id."""
    kit = read_kit(admin_kit, "admin")
    deployable(experiment)
    if unbounded := unbounded_sites(experiment):
        announce(f"warning: no agreed [[sites]] cases for {', '.join(unbounded)}: with weighted_by = \"n_samples\" "
                 "such a site could claim up to 10^7 cases and take most of the weight; state each site's cases")
    session = admin.connect(kit)
    with tempfile.TemporaryDirectory() as scratch:
        job = write_job(Path(scratch) / experiment.name, experiment.name, experiment.to_toml(), resume,
                        min_sites=experiment.deployment.needed(len(experiment.sites)), network=kit.network,
                        components=COMPONENTS)
        return session, admin.submit(session, job)


def follow(admin_kit: Path, session: Any, job_id: str, out: Path,
           on_progress: Callable[[admin.JobState], None]) -> dict[str, Any]:
    """Wait for the job to end (across coordinator restarts), copy its run directory to ``out``
    and return how the run ended (``state``: finished or failed, with the ``error``), as the
    coordinator recorded it."""
    kit = read_kit(admin_kit, "admin")
    try:
        job, session = admin.wait(session, job_id, on_progress, reconnect=lambda: admin.connect(kit))
        try:
            admin.download_run(session, job_id, out)
        except UserError:
            return {"state": "failed", "error": f"job {job_id} ended as {job.status} before writing a run "
                                                "directory; see the coordinator's log"}
        return json.loads((out / DEPLOYMENT_FILE).read_text())
    finally:
        session.close()  # the admin API's threads keep the process alive until closed


def status(admin_kit: Path) -> dict[str, Any]:
    kit: Kit = read_kit(admin_kit, "admin")
    session = admin.connect(kit)
    try:
        return admin.consortium(session)
    finally:
        session.close()
