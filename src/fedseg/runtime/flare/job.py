"""A FLARE job folder for one experiment: fedseg's controller on the coordinator, fedseg's
executor on every site, the experiment file as their argument. No custom code travels with
the job: every participant runs the fedseg it installed, so sites need not allow custom code.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedseg.runtime.flare.processes import CONTROLLER, EXECUTOR
from fedseg.runtime.flare.provision import Network

TASKS = ["train", "validate", "evaluate"]
DEPLOYMENT_FILE = "deployment.json"
"""In the run directory: the FLARE job that owns the run and how it ended (running/finished/failed)."""
AUDIT_FILE = "received.jsonl"
"""In the run directory: everything the coordinator received from the sites, weight values left out."""
PROGRESS_FILE = "fedseg_progress.json"
"""Written by the coordinator into the job's folder after each round; read by 'fedseg status'."""


def write_job(folder: Path, name: str, experiment: str, resume: bool, min_sites: int, network: Network,
              coordinator_factory: str = "fedseg.deployment:coordinator_app",
              site_factory: str = "fedseg.deployment:site_app") -> Path:
    """Write the job into ``folder``; ``min_sites`` sites must be online for FLARE to start it.
    The project's ``network`` timings go into the job too: FLARE reads the task polling interval
    from the job's own settings (2 s when absent, the largest share of a round's overhead)."""
    config = Path(folder) / "app" / "config"
    config.mkdir(parents=True, exist_ok=True)
    meta = {"name": name, "resource_spec": {}, "deploy_map": {"app": ["@ALL"]}, "min_clients": min_sites}
    server = {"format_version": 2, "components": [],
              "server": {"heart_beat_timeout": network.heartbeat_timeout_s,
                         "task_request_interval": network.task_poll_interval_s},
              "workflows": [
        {"id": "fedseg_controller", "path": CONTROLLER,
         "args": {"experiment": experiment, "app_factory": coordinator_factory, "resume": resume}}]}
    client = {"format_version": 2, "components": [], "default_task_fetch_interval": network.task_poll_interval_s,
              "executors": [
        {"tasks": TASKS, "executor": {"path": EXECUTOR, "args": {
            "experiment": experiment, "app_factory": site_factory, "run_name": name}}}]}
    (Path(folder) / "meta.json").write_text(json.dumps(meta, indent=2))
    (config / "config_fed_server.json").write_text(json.dumps(server, indent=2))
    (config / "config_fed_client.json").write_text(json.dumps(client, indent=2))
    return Path(folder)
