"""Starting the coordinator and a site from their kits: local settings, then FLARE's own process.

Each start rewrites the kit's ``local/resources.json`` from FLARE's ``resources.json.default``:
fedseg's controller joins the coordinator's class allow-list and a site's holds fedseg's executor
alone (FLARE refuses any other class in a job), the coordinator keeps its job store and run
directories inside its kit (not ``/tmp``), and the heartbeat and polling intervals come from the
project's ``[network]`` table. Sites and the
coordinator then run FLARE's server/client module in the foreground, so a process supervisor
(systemd, a container) sees it die and restarts it.

What a site writes into its logs stays at the site unless its operator starts it with
``fedseg site --share-logs`` (``configure_site``): FLARE 2.9 would stream each job's error log to
the coordinator, and its job store keeps it. Jobs are written by whoever submits them, so the
site also admits no job component but fedseg's executor and no custom code, which could stream
logs on their own.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from fedseg.runtime.flare.provision import Kit

RUNS_ENV = "FEDSEG_RUNS"
"""Where the coordinator keeps run directories (default: ``<kit>/runs``)."""
DATA_ENV = "FEDSEG_SITE_DATA"
"""A site's data folder, handed to its job process through the environment, never over the network."""
FAULT_ENV = "FEDSEG_SITE_FAULT"
SHARE_MODELS_ENV = "FEDSEG_SITE_SHARE_MODELS"
"""``fedseg site --share-models score|none``: whether the site's own models may be scored elsewhere."""
MAX_EPSILON_ENV = "FEDSEG_SITE_MAX_EPSILON"
"""``fedseg site --max-epsilon``: the site's own DP budget over all runs (``deployment.site_budget``)."""
"""A fault the site injects on purpose (``fedseg site --fault``), for robustness tests; site-side only."""
DEVICE_ENV = "FEDSEG_SITE_DEVICE"
"""``fedseg site --device``: the device the site trains on, over the experiment's ``[training] device``."""
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""``fedseg site --threads N``: torch takes its intra-op threads from these when a site process starts."""
MAX_THREADS = 1024
SHARE_LOGS = "allow_log_streaming"
"""FLARE's own switch in a site's ``local/resources.json``; ``site_process`` reads it too."""
SITE_LOG_STREAMER = "nvflare.app_common.logging.site_log_streamer.SiteLogStreamer"
JOB_LOG_STREAMER = "nvflare.app_common.logging.job_log_streamer.JobLogStreamer"
NO_CUSTOM_CODE = {"byoc": "none", "server-predeployed-flwr": "none"}
"""Rights no one has at a site: jobs that bring their own code, Flower apps the server deploys."""


def configure_server(kit: Kit, controller: str) -> None:
    """The coordinator's local settings; ``controller`` is the one class a job may run there
    (FLARE's default list admits some eighty of its own, e.g. trackers that write to any URI)."""
    settings = _defaults(kit)
    settings["class_allow_list"] = [controller]
    server = settings["servers"][0]
    server["heart_beat_timeout"] = kit.network.heartbeat_timeout_s
    server["task_request_interval"] = kit.network.task_poll_interval_s
    for component in settings["components"]:
        if component["id"] == "job_manager":
            component["args"]["uri_root"] = str(kit.root / "jobs-storage")
    settings["snapshot_persistor"]["args"]["storage"]["args"]["root_dir"] = str(kit.root / "snapshot-storage")
    _write(kit, settings)


def configure_site(kit: Kit, executor: str, share_logs: bool = False) -> None:
    """The site's own policy, decided by its operator alone (a job cannot change it): job
    components are fedseg's ``executor`` only, no custom code runs, and logs are sent to the
    coordinator only with ``share_logs`` (FLARE's log streaming; ``site_process`` also answers
    the admin commands that read a site's files and error messages only then)."""
    settings = _defaults(kit)
    settings["class_allow_list"] = [executor, *([JOB_LOG_STREAMER] if share_logs else [])]
    settings[SHARE_LOGS] = share_logs
    if not share_logs:
        settings["components"] = [c for c in settings["components"] if c.get("path") != SITE_LOG_STREAMER]
    if not kit.network.compression:
        settings.get("client", {}).pop("compression", None)
    _write(kit, settings)
    _write_authorization(kit)


def _write_authorization(kit: Kit) -> None:
    """FLARE's default policy of the kit, with custom code refused for every role (a role granted
    "any" right gets every admin command right spelt out instead, so that the refusal can be added)."""
    from nvflare.apis.fl_constant import AdminCommandNames
    from nvflare.security.security import COMMAND_CATEGORIES

    policy = json.loads((kit.root / "local" / "authorization.json.default").read_text())
    rights = {*COMMAND_CATEGORIES.values(), *(v for k, v in vars(AdminCommandNames).items() if not k.startswith("_"))}
    for role, granted in policy["permissions"].items():
        spelt_out = granted if isinstance(granted, dict) else {right: granted for right in sorted(rights)}
        policy["permissions"][role] = {**spelt_out, **NO_CUSTOM_CODE}
    (kit.root / "local" / "authorization.json").write_text(json.dumps(policy, indent=2) + "\n")


def server_command(kit: Kit) -> list[str]:
    """FLARE's server, with a site restarted mid-job given its job again (``server_process``)."""
    return [sys.executable, "-u", "-m", "fedseg.runtime.flare.server_process", "-m", str(kit.root),
            "-s", "fed_server.json", "--set", "secure_train=true", f"org={kit.org}", "config_folder=config"]


def site_command(kit: Kit) -> list[str]:
    return [sys.executable, "-u", "-m", "fedseg.runtime.flare.site_process", "-m", str(kit.root),
            "-s", "fed_client.json", "--set", "secure_train=true", f"uid={kit.name}", f"org={kit.org}",
            "config_folder=config", f"heart_beat_interval={kit.network.heartbeat_interval_s}"]


def server_environment(kit: Kit, runs: Path | None) -> dict[str, str]:
    # MALLOC_ARENA_MAX as FLARE's own start scripts set it: fewer glibc arenas, less RSS lost to
    # fragmentation when many threads handle model-sized messages. A fixed mmap threshold: a
    # buffer of a megabyte or more (a transfer's reply, a model's array) goes back to the system
    # when freed, instead of raising glibc's threshold and staying in the arenas of FLARE's threads
    # (measured: 9 model sizes at the peak with it, 13 without; benchmarks/deployment_overhead.py).
    return {"MALLOC_ARENA_MAX": "4", "MALLOC_MMAP_THRESHOLD_": str(2**20), **os.environ, RUNS_ENV: str(Path(runs).resolve() if runs else kit.root / "runs"),
            "NVFLARE_DEAD_CLIENT_GRACE_PERIOD": str(kit.network.dead_site_grace_s)}


def site_environment(data: Path, fault: str | None = None, max_epsilon: float | None = None,
                     share_models: str = "score") -> dict[str, str]:
    environment = {"MALLOC_ARENA_MAX": "2", **os.environ, DATA_ENV: str(Path(data).resolve()),
                   SHARE_MODELS_ENV: share_models}
    environment.pop(FAULT_ENV, None)
    environment.pop(MAX_EPSILON_ENV, None)
    return {**environment, **({FAULT_ENV: fault} if fault else {}),
            **({MAX_EPSILON_ENV: repr(float(max_epsilon))} if max_epsilon is not None else {})}


def site_resources(environment: dict[str, str], site: str, device: str | None = None,
                   threads: int | None = None) -> dict[str, str]:
    """``environment`` with the site operator's ``--device`` (checked against this machine's GPUs
    now, not at the first job) and ``--threads`` (for sites sharing one machine); without them the
    experiment's device and torch's default threads apply."""
    environment = {k: v for k, v in environment.items() if k != DEVICE_ENV}
    if device is not None:
        from fedseg.training.devices import placed_device  # torch: only for a site that names its device

        placed_device(device, site, what="--device")
        environment[DEVICE_ENV] = device
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
            raise ValueError(f"--threads must be a whole number from 1 to {MAX_THREADS}, got {threads!r:.20}")
        environment.update(dict.fromkeys(THREAD_VARIABLES, str(threads)))
    return environment


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
