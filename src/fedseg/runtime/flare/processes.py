"""Starting the coordinator and a site from their kits: local settings, then FLARE's own process.

Each start rewrites the kit's ``local/resources.json`` from FLARE's ``resources.json.default``:
fedseg's two components join the class allow-list (FLARE refuses any other class in a job), the
coordinator keeps its job store and run directories inside its kit (not ``/tmp``), and the
heartbeat and polling intervals come from the project's ``[network]`` table. Sites and the
coordinator then run FLARE's server/client module in the foreground, so a process supervisor
(systemd, a container) sees it die and restarts it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from fedseg.runtime.flare.provision import Kit

CONTROLLER = "fedseg.runtime.flare.controller.PlanController"
EXECUTOR = "fedseg.runtime.flare.executor.SiteExecutor"
RUNS_ENV = "FEDSEG_RUNS"
"""Where the coordinator keeps run directories (default: ``<kit>/runs``)."""
DATA_ENV = "FEDSEG_SITE_DATA"
"""A site's data folder, handed to its job process through the environment, never over the network."""


def configure_server(kit: Kit) -> None:
    settings = _defaults(kit)
    settings["class_allow_list"].append(CONTROLLER)
    server = settings["servers"][0]
    server["heart_beat_timeout"] = kit.network.heartbeat_timeout_s
    server["task_request_interval"] = kit.network.task_poll_interval_s
    for component in settings["components"]:
        if component["id"] == "job_manager":
            component["args"]["uri_root"] = str(kit.root / "jobs-storage")
    settings["snapshot_persistor"]["args"]["storage"]["args"]["root_dir"] = str(kit.root / "snapshot-storage")
    _write(kit, settings)


def configure_site(kit: Kit) -> None:
    settings = _defaults(kit)
    settings["class_allow_list"].append(EXECUTOR)
    if not kit.network.compression:
        settings.get("client", {}).pop("compression", None)
    _write(kit, settings)


def server_command(kit: Kit) -> list[str]:
    return [sys.executable, "-u", "-m", "nvflare.private.fed.app.server.server_train", "-m", str(kit.root),
            "-s", "fed_server.json", "--set", "secure_train=true", f"org={kit.org}", "config_folder=config"]


def site_command(kit: Kit) -> list[str]:
    return [sys.executable, "-u", "-m", "fedseg.runtime.flare.site_process", "-m", str(kit.root),
            "-s", "fed_client.json", "--set", "secure_train=true", f"uid={kit.name}", f"org={kit.org}",
            "config_folder=config", f"heart_beat_interval={kit.network.heartbeat_interval_s}"]


def server_environment(kit: Kit, runs: Path | None) -> dict[str, str]:
    # MALLOC_ARENA_MAX as FLARE's own start scripts set it: fewer glibc arenas, less RSS lost to
    # fragmentation when many threads handle model-sized messages.
    return {"MALLOC_ARENA_MAX": "4", **os.environ, RUNS_ENV: str(Path(runs).resolve() if runs else kit.root / "runs"),
            "NVFLARE_DEAD_CLIENT_GRACE_PERIOD": str(kit.network.dead_site_grace_s)}


def site_environment(data: Path) -> dict[str, str]:
    return {"MALLOC_ARENA_MAX": "2", **os.environ, DATA_ENV: str(Path(data).resolve())}


def _defaults(kit: Kit) -> dict:
    return json.loads((kit.root / "local" / "resources.json.default").read_text())


def _write(kit: Kit, settings: dict) -> None:
    (kit.root / "local" / "resources.json").write_text(json.dumps(settings, indent=2) + "\n")


def requeue_interrupted_jobs(kit: Kit) -> list[str]:
    """Jobs the job store still calls running when the coordinator starts were cut off by a crash
    (FLARE 2.9 leaves them RUNNING for ever). Marking them submitted again makes FLARE's scheduler
    rerun them; fedseg's controller then resumes each from its run directory's last round."""
    from nvflare.apis.impl.job_def_manager import _OBJ_TAG_SCHEDULED
    from nvflare.app_common.storages.filesystem_storage import FilesystemStorage

    store, root, requeued = FilesystemStorage(), kit.root / "jobs-storage", []
    for job in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            meta = store.get_meta(str(job))
        except Exception:  # not a job folder (FLARE keeps its submit records beside the jobs)
            continue
        if meta.get("status") in ("RUNNING", "DISPATCHED"):
            store.update_meta(str(job), {"status": "SUBMITTED"}, replace=False)
            (job / _OBJ_TAG_SCHEDULED).unlink(missing_ok=True)  # FLARE's "already scheduled" mark
            requeued.append(job.name)
    return requeued
