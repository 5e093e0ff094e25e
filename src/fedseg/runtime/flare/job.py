"""A FLARE job folder for one experiment: fedseg's controller on the coordinator, fedseg's
executor on every site, the experiment file as their argument. No code and no importable name
travels with the job beyond those two classes, which each kit's allow-list admits and nothing
else: every participant runs the fedseg it installed, so sites need not allow custom code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fedseg.runtime.flare.provision import Network
from fedseg.runtime.flare.wire import ARM_TASKS
from fedseg.runtime.site_app import TASKS


@dataclass(frozen=True)
class Components:
    """The classes a job runs: fedseg's coordinator and site executor, fixed in code by the
    layer that builds them (``fedseg.deployment``); kits admit exactly these."""

    controller: str
    executor: str


DEPLOYMENT_FILE = "deployment.json"
"""In the run directory: the FLARE job that owns the run and how it ended (running/finished/failed)."""
PROGRESS_FILE = "fedseg_progress.json"
"""Written by the coordinator into the job's folder after each round; read by 'fedseg status'."""


def write_job(folder: Path, name: str, experiment: str, resume: bool, min_sites: int, network: Network,
              components: Components, cases: str = "test") -> Path:
    """Write the job into ``folder``; ``min_sites`` sites must be online for FLARE to start it.
    The project's ``network`` timings go into the job too: FLARE reads the task polling interval
    from the job's own settings (2 s when absent, the largest share of a round's overhead). ``cases``:
    what a scoring job's sites score (``all``: every case, for ``fedseg evaluate --cases all``)."""
    config = Path(folder) / "app" / "config"
    config.mkdir(parents=True, exist_ok=True)
    meta = {"name": name, "resource_spec": {}, "deploy_map": {"app": ["@ALL"]}, "min_clients": min_sites}
    server = {"format_version": 2, "components": [],
              "server": {"heart_beat_timeout": network.heartbeat_timeout_s,
                         "task_request_interval": network.task_poll_interval_s},
              "workflows": [
        {"id": "fedseg_controller", "path": components.controller,
         "args": {"experiment": experiment, "resume": resume}}]}
    client = {"format_version": 2, "components": [], "default_task_fetch_interval": network.task_poll_interval_s,
              "executors": [
        {"tasks": [*TASKS, *ARM_TASKS], "executor": {"path": components.executor, "args": {
            "experiment": experiment, "run_name": name, **({"cases": cases} if cases != "test" else {})}}}]}
    (Path(folder) / "meta.json").write_text(json.dumps(meta, indent=2))
    (config / "config_fed_server.json").write_text(json.dumps(server, indent=2))
    (config / "config_fed_client.json").write_text(json.dumps(client, indent=2))
    return Path(folder)
